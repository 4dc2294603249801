"""A WireGuard handshake responder for tests, with real cryptography.

No WireGuard kernel module exists on these machines, so this implements the responder side of
WireGuard's Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake (whitepaper section 5.4) on its
own, independently of ``probes.wireguard`` (written from the whitepaper, sharing no code), with
X25519, ChaCha20-Poly1305 and BLAKE2s from ``cryptography``/``hashlib``. Like a real server it
stays silent unless MAC1 is keyed with its public key, the initiator's static key decrypts and
belongs to a known peer, and the timestamp decrypts. ``under_load`` makes it send a cookie reply.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import os
import socket
import threading
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def blake2s(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def hkdf(chaining: bytes, material: bytes, count: int) -> tuple[bytes, ...]:
    prk = std_hmac.new(chaining, material, "blake2s").digest()
    keys: list[bytes] = []
    block = b""
    for n in range(1, count + 1):
        block = std_hmac.new(prk, block + n.to_bytes(1, "big"), "blake2s").digest()
        keys.append(block)
    return tuple(keys)


def nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "little")


def raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass
class Responder:
    static: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    peers: set[bytes] = field(default_factory=set)  # initiators' static public keys
    psk: bytes = bytes(32)
    under_load: bool = False
    received: int = 0
    answered: int = 0
    port: int = 0
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None

    @property
    def public(self) -> bytes:
        return raw(self.static)

    def answer(self, msg: bytes) -> bytes | None:
        if len(msg) != 148 or msg[0] != 1 or msg[1:4] != bytes(3):
            return None
        mac_key = blake2s(b"mac1----" + self.public)
        if not std_hmac.compare_digest(
                hashlib.blake2s(msg[:116], digest_size=16, key=mac_key).digest(), msg[116:132]):
            return None
        sender = msg[4:8]
        if self.under_load:
            return b"\x03\x00\x00\x00" + sender + os.urandom(24) + os.urandom(32)
        ck = blake2s(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
        h = blake2s(blake2s(ck + b"WireGuard v1 zx2c4 Jason@zx2c4.com") + self.public)
        e_i = msg[8:40]
        (ck,) = hkdf(ck, e_i, 1)
        h = blake2s(h + e_i)
        try:
            ck, key = hkdf(ck, self.static.exchange(X25519PublicKey.from_public_bytes(e_i)), 2)
            s_i = ChaCha20Poly1305(key).decrypt(nonce(0), msg[40:88], h)
            h = blake2s(h + msg[40:88])
            if s_i not in self.peers:
                return None
            ck, key = hkdf(ck, self.static.exchange(X25519PublicKey.from_public_bytes(s_i)), 2)
            ChaCha20Poly1305(key).decrypt(nonce(0), msg[88:116], h)  # the TAI64N timestamp
            h = blake2s(h + msg[88:116])
        except (InvalidTag, ValueError):
            return None
        eph = X25519PrivateKey.generate()
        e_r = raw(eph)
        (ck,) = hkdf(ck, e_r, 1)
        h = blake2s(h + e_r)
        (ck,) = hkdf(ck, eph.exchange(X25519PublicKey.from_public_bytes(e_i)), 1)
        (ck,) = hkdf(ck, eph.exchange(X25519PublicKey.from_public_bytes(s_i)), 1)
        ck, tau, key = hkdf(ck, self.psk, 3)
        h = blake2s(h + tau)
        empty = ChaCha20Poly1305(key).encrypt(nonce(0), b"", h)
        body = b"\x02\x00\x00\x00" + os.urandom(4) + sender + e_r + empty
        mac1 = hashlib.blake2s(body, digest_size=16, key=blake2s(b"mac1----" + s_i)).digest()
        return body + mac1 + bytes(16)

    def __enter__(self) -> Responder:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                msg, addr = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            reply = self.answer(msg)
            if reply is not None:
                self.answered += 1
                self._sock.sendto(reply, addr)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None and self._sock is not None
        self._thread.join()
        self._sock.close()
