"""The lab's real servers: their addresses, the lab CA, and the configs of dnsmasq and nginx.

Every host name of the built-in catalogue (domains, URL hosts, endpoint hosts) resolves at the
lab's "public" resolver to the addresses of the *service* that first lists it, one IPv4 and one
IPv6 address per service (A and AAAA records; the IPv6 one is the IPv4 one's twin in the lab's
ULA prefix, see ``blockwatch.lab.topology.v6``), so a censor rule on an address hits one
service only. Endpoints given as IP literals
(Telegram's data centres, a Tor directory authority, ...) are added to the server namespace as
they are: they exist only inside the lab's own namespaces. Generated benchmark sites
(``siteN.bench.lab``) get addresses of their own, and so does the lab-only service ``labvpn``
(the lab's OpenVPN and strongSwan servers, see ``blockwatch.lab.vpn``).

Opt-in lab-only services (``Catalogue.opt_in``) live in the lab like the others (an address,
public DNS records, the lab's nginx) but the clients' default configs do not sweep them: a
sweep that wants them appends :func:`opt_in_toml` to its config (``[[services]]`` entries).
``labweb`` is one: a site with a plain ``http://`` URL, so that a censor's block page over HTTP
reaches the HTTP probe (every catalogue URL is ``https://``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from blockwatch.lab.topology import LAB_NET, LAB_NET6, v6
from blockwatch.lab.vpn import LABVPN
from blockwatch.probes.catalogue import load_catalogue
from blockwatch.probes.ech_hello import ECHConfig, ech_config_list
from blockwatch.probes.model import Service
from blockwatch.probes.scope import is_ip

SERVICE_NET = "10.201.10.0/24"
SITE_NETS = ("10.201.100.0/22",)  # room for 1000 generated sites
HTTP_PORTS = (80, 5222, 8080)  # plain TCP ports of catalogue endpoints (+ HTTP)
# 443 (HTTPS) and 9201 (the Tor OR port in the catalogue: Tor speaks TLS there) serve TLS
BENCH_DOMAIN = "bench.lab"
LABWEB = "labweb"


def service_hosts(s: Service) -> list[str]:
    hosts = [*s.domains, *(urlsplit(u).hostname or "" for u in s.urls),
             *(e.host for e in s.endpoints)]
    return [h.lower() for h in dict.fromkeys(hosts) if h and not is_ip(h)]


def site_service(i: int) -> Service:
    host = f"site{i}.{BENCH_DOMAIN}"
    return Service(name=f"site{i}", title=f"lab site {i}", category="lab", domains=(host,),
                   urls=(f"https://{host}/",))


def opt_in_services() -> dict[str, Service]:
    """Lab-only services that a sweep must name in its config (:func:`opt_in_toml`)."""
    return {LABWEB: Service(
        name=LABWEB, title="the lab's plain-HTTP site", category="lab",
        domains=("labweb.lab", "www.labweb.lab"), urls=("http://www.labweb.lab/",),
        source="blockwatch lab (not a real service)")}


def opt_in_toml(names: Iterable[str] | None = None) -> str:
    """``[[services]]`` entries declaring opt-in lab services (all of them by default), to
    append to a client's config so that a sweep can name them."""
    lines: list[str] = []
    services = opt_in_services()
    for name in services if names is None else names:
        s = services[name]
        lines += ["[[services]]", *(f"{k} = {json.dumps(v)}" for k, v in (
            ("name", s.name), ("title", s.title), ("category", s.category),
            ("domains", list(s.domains)), ("urls", list(s.urls)), ("source", s.source)))]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Who lives where in the lab."""

    services: Mapping[str, Service]  # what the clients' default configs sweep
    address: Mapping[str, str]  # service -> its lab address (IPv4)
    literals: Mapping[str, tuple[str, ...]]  # service -> IP-literal endpoints it owns
    owner: Mapping[str, str]  # host name -> the service whose address it resolves to
    # lab-only services served like the others but swept only when a config names them
    opt_in: Mapping[str, Service] = field(default_factory=dict)

    def known(self) -> dict[str, Service]:
        """Every service a scenario may name: the swept ones and the opt-in ones."""
        return {**self.services, **self.opt_in}

    def address6(self, service: str) -> str:
        """The service's IPv6 address (its AAAA record)."""
        return v6(self.address[service])

    def addresses_of(self, service: str) -> list[str]:
        """The service's IPv4 addresses: its own and the IP-literal endpoints it owns."""
        return [self.address[service], *self.literals.get(service, ())]

    def addresses6_of(self, service: str) -> list[str]:
        """The service's IPv6 addresses (the catalogue's IP literals are all IPv4)."""
        return [self.address6(service)]

    def all_addresses(self) -> list[str]:
        return [a for name in self.known() for a in self.addresses_of(name)]

    def all_addresses6(self) -> list[str]:
        return [a for name in self.known() for a in self.addresses6_of(name)]

    def hosts_of(self, service: str) -> list[str]:
        return service_hosts(self.known()[service])

    def scope(self) -> list[str]:
        lits = sorted({f"{a}/32" for v in self.literals.values() for a in v})
        return [LAB_NET, LAB_NET6, *lits]


def lab_catalogue(sites: int = 0) -> Catalogue:
    services: dict[str, Service] = dict(load_catalogue())
    # the lab's own VPN servers (blockwatch.lab.vpn): a service of their own, named in the
    # clients' configs as [[vpn]] entries, so a censor rule on its address hits them only
    services[LABVPN] = Service(name=LABVPN, title="the lab's OpenVPN and IKEv2 servers",
                               category="vpn", source="blockwatch lab (not a real service)")
    opt_in = opt_in_services()
    builtin = [*services, *opt_in]  # opt-in ones last: the others keep their addresses
    for i in range(sites):
        services[f"site{i}"] = site_service(i)
    net = list(ipaddress.ip_network(SERVICE_NET).hosts())
    site_net = list(ipaddress.ip_network(SITE_NETS[0]).hosts())
    address: dict[str, str] = {}
    literals: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for i, name in enumerate(builtin):
        address[name] = str(net[i])
    for i in range(sites):
        address[f"site{i}"] = str(site_net[i])
    for name, s in {**services, **opt_in}.items():
        literals[name] = tuple(dict.fromkeys(e.host for e in s.endpoints if is_ip(e.host)))
        for h in service_hosts(s):
            owner.setdefault(h, name)
    return Catalogue(services=services, address=address, literals=literals, owner=owner,
                     opt_in=opt_in)


# Services whose names publish an HTTPS record with an ECH config (the ech probe's real-config
# path). The config is made up (the lab's nginx has no ECH): a server without ECH answers the
# outer ClientHello like any other, which is what the probe asks.
ECH_SERVICES = ("torproject",)
LAB_ECH = ECHConfig(config_id=42, kem_id=0x0020, suites=((0x0001, 0x0001),),
                    public_name="ech-public.lab", public_key=bytes(range(32)))


def https_rdata() -> str:
    """The hex wire form of the HTTPS record the ECH services' names publish."""
    import base64

    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    ech = base64.b64encode(ech_config_list([LAB_ECH])).decode()
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.HTTPS,
                             f'1 . alpn="h2,http/1.1" ech={ech}')
    return (rd.to_wire() or b"").hex()  # bytes whenever no file is given


def dnsmasq_public_conf(cat: Catalogue, listen: str) -> str:
    """The lab's authoritative/"public" resolver: answers every lab name (A and AAAA, and
    HTTPS for ``ECH_SERVICES``), forwards nothing."""
    lines = ["no-resolv", "no-hosts", "bind-interfaces", f"listen-address={listen}",
             "cache-size=0", "local-ttl=60", "user=root", "group=root"]
    lines += [f"host-record={h},{cat.address[svc]},{cat.address6(svc)}"
              for h, svc in cat.owner.items()]
    lines += [f"dns-rr={h},65,{https_rdata()}" for svc in ECH_SERVICES
              for h in cat.hosts_of(svc) if cat.owner.get(h) == svc]
    return "\n".join(lines) + "\n"


# --- the lab CA -----------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_ca(directory: Path, common_name: str) -> tuple[x509.Certificate,
                                                         ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: Iterable[str],
          cert_path: Path, key_path: Path) -> None:
    """A server certificate for ``hosts`` signed by ``ca``; writes chain and key (PEM)."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    sans = [x509.DNSName(h) for h in dict.fromkeys(hosts)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab server")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    cert_path.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    _write_key(key, key_path)


def make_pki(directory: Path, hosts: list[str]) -> dict[str, Path]:
    """The lab CA (trusted by the lab's clients) and the censor's own CA (trusted by nobody),
    each with a certificate for every lab host. Returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for who, cn in (("lab", "blockwatch lab root CA"), ("censor", "censor interception CA")):
        ca, ca_key = make_ca(directory, cn)
        ca_path = directory / f"{who}-ca.crt"
        ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        paths[f"{who}_ca"] = ca_path
        paths[f"{who}_cert"] = directory / f"{who}-server.crt"
        paths[f"{who}_key"] = directory / f"{who}-server.key"
        issue(ca, ca_key, hosts, paths[f"{who}_cert"], paths[f"{who}_key"])
    return paths


# --- nginx ----------------------------------------------------------------------------------------


def _nginx_frame(directory: Path, tag: str, servers: str) -> str:
    tmp = directory / f"nginx-{tag}-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    temps = "\n".join(f"    {k}_temp_path {tmp / k};"
                      for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
master_process on;
worker_processes 2;
user root;
pid {directory / f'nginx-{tag}.pid'};
error_log {directory / f'nginx-{tag}.err'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temps}
    default_type text/html;
    keepalive_timeout 5;
{servers}
}}
"""


SITE_PAGE = ("<!doctype html><html><head><title>$host (blockwatch lab)</title></head><body>"
             "The lab's copy of $host.</body></html>")


def nginx_server_conf(directory: Path, pki: Mapping[str, Path]) -> str:
    """Every lab site over HTTP and HTTPS (HTTP/2 too), IPv4 and IPv6, with the lab CA's
    certificate."""
    listens = "\n".join(f"        listen {p};\n        listen [::]:{p};" for p in HTTP_PORTS)
    servers = f"""    server {{
{listens}
        listen 443 ssl http2;
        listen [::]:443 ssl http2;
        listen 9201 ssl;
        listen [::]:9201 ssl;
        ssl_certificate {pki['lab_cert']};
        ssl_certificate_key {pki['lab_key']};
        # as sites that serve HTTP/3 say (blockwatch.lab.h3server answers UDP/443)
        add_header Alt-Svc 'h3=":443"; ma=86400' always;
        location / {{
            return 200 "{SITE_PAGE}\\n";
        }}
    }}"""
    return _nginx_frame(directory, "server", servers)


BLOCK_PAGE = ("<!doctype html><html><head><title>Access denied</title></head><body>This site "
              "is blocked in accordance with the law (blockwatch lab censor).</body></html>")


# A copy of Iran's national block page as the country's ISPs serve it for a blocked site over
# HTTP: "403 Forbidden" and an iframe to 10.10.34.34 (peyvandha.ir), byte for byte as captured
# in the wild (e.g. getlantern/detour's test fixture). The shipped fingerprint
# bw.http.ir_peyvandha_iframe (analysis/data/fingerprints/http.json) describes it.
NATIONAL_BLOCK_PAGE = (
    '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1256">'
    "<title>M1-6\n</title></head><body><iframe "
    'src="http://10.10.34.34?type=Invalid Site&policy=MainPolicy " style="width: 100%; '
    'height: 100%" scrolling="no" marginwidth="0" marginheight="0" frameborder="0" vspace="0" '
    'hspace="0"></iframe></body></html>')
NATIONAL_PORT = 8081  # where the censor's nftables send HTTP of http_blockpage_national


def _nginx_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_censor_conf(directory: Path, pki: Mapping[str, Path]) -> str:
    """The censor's transparent proxy: a block page over HTTP (451) and over HTTPS with a
    certificate of the censor's own CA, which the clients do not trust; and on
    ``NATIONAL_PORT`` the national block page (403, as Iran's ISPs answer)."""
    servers = f"""    server {{
        listen 8080;
        listen [::]:8080;
        listen 8443 ssl;
        listen [::]:8443 ssl;
        ssl_certificate {pki['censor_cert']};
        ssl_certificate_key {pki['censor_key']};
        location / {{ return 451 "{BLOCK_PAGE}\\n"; }}
    }}
    server {{
        listen {NATIONAL_PORT};
        listen [::]:{NATIONAL_PORT};
        location / {{ return 403 {_nginx_quote(NATIONAL_BLOCK_PAGE)}; }}
    }}"""
    return _nginx_frame(directory, "censor", servers)
