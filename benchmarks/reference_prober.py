"""Reference prober: what a competent engineer writes in an afternoon. For every name at once
(at most 1,000 in flight): one A query (dnspython, UDP) to RESOLVER, then one GET of
http://NAME/ (to the address, with the Host header) through a client of its own (one client
shared by thousands of requests spends its time in the pool's bookkeeping), all clients
sharing one TLS context (each would load the CA store). One JSON line per name.

    python reference_prober.py NAMES_FILE RESOLVER_IP TIMEOUT_S
"""

import asyncio
import json
import ssl
import sys
from typing import Any

import dns.asyncquery
import dns.message
import dns.rdatatype
import httpx


async def probe(name: str, resolver: str, wait_s: float, gate: asyncio.Semaphore,
                tls: ssl.SSLContext) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "dns_ok": False, "address": None}
    async with gate:
        try:
            reply = await dns.asyncquery.udp(dns.message.make_query(name, "A"), resolver, wait_s)
        except Exception as exc:
            return {**out, "failure": f"dns {type(exc).__name__}"}
        addresses = [rd.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A
                     for rd in rrset]
        if not addresses:
            return {**out, "failure": f"dns rcode {reply.rcode()}, no address"}
        out.update(dns_ok=True, address=addresses[0])
        try:
            async with httpx.AsyncClient(timeout=wait_s, verify=tls) as client:
                response = await client.get(f"http://{addresses[0]}/", headers={"Host": name})
            return {**out, "http_status": response.status_code}
        except httpx.HTTPError as exc:
            return {**out, "failure": type(exc).__name__}


async def main(names: list[str], resolver: str, wait_s: float) -> None:
    gate, tls = asyncio.Semaphore(1000), ssl.create_default_context()  # one CA store, shared
    results = await asyncio.gather(*(probe(n, resolver, wait_s, gate, tls) for n in names))
    sys.stdout.write("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        asyncio.run(main(fh.read().split(), sys.argv[2], float(sys.argv[3])))
