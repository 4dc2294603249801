"""The ``ech`` probe's wire work: ClientHellos with and without an ECH extension (built by
scapy's TLS layers), the first TLS record of the reply read within bounds, and the ECHConfigList
of an HTTPS record read (and, for the lab and tests, written).

Guarantees:

- Every ClientHello is scapy's ``TLSClientHello`` in a ``TLS`` record: a TLS 1.3 offer as a
  browser makes it (SNI, ALPN, supported_versions, x25519 key share with fresh random bytes,
  signature algorithms), each with its own random, session id and key share. The ECH extension
  (type 0xfe0d, RFC 9849 section 5) is scapy's ``TLS_Ext_Unknown`` carrying an outer
  ``ECHClientHello``: GREASE (section 6.2: a random config id, the HPKE suite
  x25519/HKDF-SHA256/AES-128-GCM, a random 32-byte enc and a random payload of a plausible
  length) or the service's own config id, KEM and first cipher suite with random enc and
  payload (no inner hello is encrypted: the censor question is whether a hello carrying ECH is
  answered, not whether ECH completes).
- ``read_reply`` reads one TLS record at most (its 5-byte header, then at most
  ``MAX_RECORD`` bytes) under one deadline: a ServerHello, a HelloRetryRequest or an alert is
  the server answering; a reset, silence, an EOF and bytes that are not TLS are told apart.
  Memory is bounded by the record limit, time by the deadline, whatever the peer sends.
- ``parse_ech_configs`` reads an ECHConfigList (RFC 9849 section 4) with every length checked
  against what is left, extensions included; anything else raises ``MalformedReply``. A config
  a client must ignore is skipped: another version, a public name that is not a host name
  (LDH labels, not an IPv4 literal: no text of the network's choosing is kept), a mandatory
  extension. No maintained Python library
  reads ECHConfig (dnspython hands over its bytes), so this is the one structure read by hand.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import re
import struct
from dataclasses import dataclass
from typing import Any

from blockwatch.probes import failures as F
from blockwatch.probes.errors import MalformedReply

ECH_EXTENSION = 0xFE0D
ECH_VERSION = 0xFE0D  # ECHConfig version of RFC 9849
GREASE_SUITE = (0x0020, 0x0001, 0x0001)  # DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM
ENC_LENGTHS = {0x0010: 65, 0x0011: 97, 0x0012: 133, 0x0020: 32, 0x0021: 56}  # KEM -> Nenc
MAX_RECORD = 16384 + 2048  # the largest TLSCiphertext (RFC 8446 section 5.2)
MAX_CONFIGS = 16
# RFC 8446 section 4.1.3: a ServerHello with this random is a HelloRetryRequest
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
ALPN = ("h2", "http/1.1")
MALFORMED = "tls_malformed_reply"  # project-local: the reply was not a TLS record we know

# scapy's TLS layers (untyped: reached through modules typed Any), imported by ``load``. The
# import takes seconds of CPU: the builder's worker process (``ech_build``) calls ``load`` when
# it starts, and waiting for it is queue time, never on a measurement's clock (and the
# analysis, which reads this probe's observations, never pays it).
_SCAPY: list[tuple[Any, Any, Any, Any]] = []


def load() -> tuple[Any, Any, Any, Any]:
    """scapy's TLS modules: extensions, handshake, TLS 1.3 key exchange, record."""
    if not _SCAPY:
        _SCAPY.append(tuple(  # type: ignore[arg-type]
            importlib.import_module(f"scapy.layers.tls.{m}")
            for m in ("extensions", "handshake", "keyexchange_tls13", "record")))
    return _SCAPY[0]


@dataclass(frozen=True, slots=True)
class ECHConfig:
    """What a ClientHello needs of one ECHConfig (and what is recorded of it)."""

    config_id: int
    kem_id: int
    suites: tuple[tuple[int, int], ...]  # (KDF, AEAD)
    public_name: str
    public_key: bytes
    max_name_length: int = 0


def _take(data: bytes, at: int, n: int) -> tuple[bytes, int]:
    if n < 0 or at + n > len(data):
        raise MalformedReply(f"ECHConfig: {n} bytes wanted at {at}, {len(data) - at} left")
    return data[at:at + n], at + n


def _u16(data: bytes, at: int) -> tuple[int, int]:
    raw, at = _take(data, at, 2)
    return struct.unpack("!H", raw)[0], at


def _vec16(data: bytes, at: int) -> tuple[bytes, int]:
    n, at = _u16(data, at)
    return _take(data, at, n)


def parse_ech_configs(data: bytes) -> list[ECHConfig]:
    """The ECHConfigs of version 0xfe0d in an ECHConfigList (others are skipped, as a client
    does); ``MalformedReply`` if the list does not parse."""
    body, end = _vec16(data, 0)
    if end != len(data):
        raise MalformedReply("ECHConfigList: bytes after the list")
    out: list[ECHConfig] = []
    at = 0
    while at < len(body):
        version, at = _u16(body, at)
        contents, at = _vec16(body, at)
        if version != ECH_VERSION or len(out) >= MAX_CONFIGS:
            continue
        raw, c = _take(contents, 0, 1)
        config_id = raw[0]
        kem_id, c = _u16(contents, c)
        public_key, c = _vec16(contents, c)
        suites_raw, c = _vec16(contents, c)
        if len(suites_raw) % 4 or not suites_raw:
            raise MalformedReply("ECHConfig: cipher suites not pairs of two-byte ids")
        suites = tuple(struct.unpack_from("!HH", suites_raw, i)
                       for i in range(0, len(suites_raw), 4))
        raw, c = _take(contents, c, 2)
        max_len, name_len = raw[0], raw[1]
        name, c = _take(contents, c, name_len)
        extensions, c = _vec16(contents, c)
        if c != len(contents):
            raise MalformedReply("ECHConfig: bytes after its extensions")
        public_name = name.decode("ascii", "replace")
        if not _public_name(public_name) or _mandatory(extensions):
            continue  # section 4: a client MUST ignore such a config
        out.append(ECHConfig(config_id, kem_id, suites, public_name, public_key, max_len))
    return out


_LDH = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_IPV4ISH = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")


def _public_name(name: str) -> bool:
    """RFC 9849 section 4: dot-separated LDH labels of at most 63 octets, no leading or
    trailing dot, and a last label that an IPv4 literal could not be read from."""
    labels = name.split(".")
    return (all(_LDH.fullmatch(label) for label in labels)
            and not _IPV4ISH.fullmatch(labels[-1]))


def _mandatory(extensions: bytes) -> bool:
    """Whether the ECHConfig's extensions hold one a client must understand (the type's high
    bit, section 4.2): this one understands none."""
    at = 0
    while at < len(extensions):
        kind, at = _u16(extensions, at)
        _, at = _vec16(extensions, at)
        if kind & 0x8000:
            return True
    return False


def ech_config_list(configs: list[ECHConfig]) -> bytes:
    """The wire form of an ECHConfigList (for the lab's HTTPS record and the tests)."""
    items = b""
    for c in configs:
        suites = b"".join(struct.pack("!HH", *s) for s in c.suites)
        name = c.public_name.encode("ascii")
        contents = (struct.pack("!BH", c.config_id, c.kem_id)
                    + struct.pack("!H", len(c.public_key)) + c.public_key
                    + struct.pack("!H", len(suites)) + suites
                    + struct.pack("!BB", c.max_name_length, len(name)) + name
                    + struct.pack("!H", 0))  # no extensions
        items += struct.pack("!HH", ECH_VERSION, len(contents)) + contents
    return struct.pack("!H", len(items)) + items


def ech_outer(config_id: int, kdf: int, aead: int, enc: bytes, payload: bytes) -> bytes:
    """The body of an outer ``ECHClientHello`` (type outer(0), the suite, the config id, enc,
    payload)."""
    return (struct.pack("!BHHB", 0, kdf, aead, config_id)
            + struct.pack("!H", len(enc)) + enc + struct.pack("!H", len(payload)) + payload)


def _payload_length() -> int:
    # an encoded inner ClientHello padded as section 6.1.3 says (to a multiple of 32) plus the
    # AEAD tag: what browsers send is 144 to 400-odd bytes
    return 32 * random.randint(5, 12) + 16


def grease_extension() -> bytes:
    _, kdf, aead = GREASE_SUITE
    return ech_outer(random.randrange(256), kdf, aead, os.urandom(32),
                     os.urandom(_payload_length()))


def real_extension(config: ECHConfig) -> bytes:
    kdf, aead = config.suites[0]
    enc = os.urandom(ENC_LENGTHS.get(config.kem_id, 32))
    return ech_outer(config.config_id, kdf, aead, enc, os.urandom(_payload_length()))


def client_hello(sni: str | None, ech: bytes | None = None,
                 alpn: tuple[str, ...] = ALPN) -> bytes:
    """One TLS record with a TLS 1.3 ClientHello, built by scapy; ``ech``: the body of the
    0xfe0d extension to carry (None: no ECH extension)."""
    x, hs, ks, rec = load()
    ext = [
        *([x.TLS_Ext_ServerName(servernames=[x.ServerName(servername=sni.encode("idna"))])]
          if sni else []),
        x.TLS_Ext_SupportedGroups(groups=[29, 23, 24]),
        x.TLS_Ext_SignatureAlgorithms(sig_algs=[0x0403, 0x0804, 0x0401, 0x0503, 0x0805,
                                                0x0501, 0x0806, 0x0601]),
        x.TLS_Ext_ALPN(protocols=[x.ProtocolName(protocol=p.encode()) for p in alpn]),
        x.TLS_Ext_SupportedVersion_CH(versions=[0x0304, 0x0303]),
        x.TLS_Ext_PSKKeyExchangeModes(kxmodes=[1]),
        ks.TLS_Ext_KeyShare_CH(client_shares=[
            ks.KeyShareEntry(group=29, key_exchange=os.urandom(32))]),
        *([x.TLS_Ext_Unknown(type=ECH_EXTENSION, val=ech)] if ech is not None else []),
    ]
    hello = hs.TLSClientHello(
        version=0x0303, gmt_unix_time=int.from_bytes(os.urandom(4), "big"),
        random_bytes=os.urandom(28), sid=os.urandom(32),
        ciphers=[0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030], comp=[0], ext=ext)
    return bytes(rec.TLS(version=0x0301, msg=[hello]))


# --- the reply ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back: ``outcome`` is ``server_hello``, ``hello_retry_request``, ``alert`` (the
    server answered), or ``reset``, ``timeout``, ``eof``, ``malformed``; ``failure`` the
    failure string (None when the server answered)."""

    outcome: str
    failure: str | None = None
    alert: int | None = None  # an alert's description (RFC 8446 section 6)
    detail: str | None = None  # what was malformed


ANSWERED = frozenset({"server_hello", "hello_retry_request", "alert"})


def _record(header: bytes, body: bytes) -> Reply:
    kind = header[0]
    if kind == 21:
        if len(body) < 2:
            return Reply("malformed", MALFORMED, detail="alert shorter than 2 bytes")
        return Reply("alert", alert=body[1])
    # a handshake record: type(1) length(3) legacy_version(2) random(32)
    if len(body) < 38 or body[0] != 2:
        return Reply("malformed", MALFORMED,
                     detail=f"handshake type {body[0] if body else None}, not a ServerHello")
    return Reply("hello_retry_request" if body[6:38] == HRR_RANDOM else "server_hello")


async def read_reply(reader: asyncio.StreamReader, seconds: float) -> Reply:
    """The first TLS record of the server's reply, read under ``seconds`` in all."""
    try:
        async with asyncio.timeout(seconds):
            header = await reader.readexactly(5)
            kind, major, length = header[0], header[1], struct.unpack("!H", header[3:5])[0]
            if kind not in (21, 22) or major != 3 or not 0 < length <= MAX_RECORD:
                return Reply("malformed", MALFORMED,
                             detail=f"record header {header.hex()} is not a TLS alert or "
                                    "handshake")
            body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            return Reply("malformed", MALFORMED, detail=f"EOF after {len(exc.partial)} bytes")
        return Reply("eof", F.EOF_ERROR)
    except TimeoutError:
        return Reply("timeout", F.GENERIC_TIMEOUT)
    except OSError as exc:
        failure = F.classify(exc)
        return Reply("reset" if failure == F.CONNECTION_RESET else "error", failure)
    return _record(header, body)
