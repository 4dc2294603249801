"""One exception tree for the probes: every exception class of blockwatch.probes is defined in
probes/errors.py, derives from ProbeError, and is drawn in the diagram at the top of it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import blockwatch.probes
from blockwatch.probes import errors


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.iter_modules(blockwatch.probes.__path__):
        module = importlib.import_module(f"blockwatch.probes.{info.name}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__.startswith("blockwatch.probes")):
                found[f"{obj.__module__}.{name}"] = obj
    return found


def test_every_probe_exception_is_in_the_one_tree() -> None:
    classes = _exception_classes()
    assert classes, "no exception classes found"
    for where, cls in classes.items():
        assert cls.__module__ == "blockwatch.probes.errors", f"{where} is defined elsewhere"
        assert issubclass(cls, errors.ProbeError), f"{where} is not a ProbeError"
        assert f" {cls.__name__} " in (errors.__doc__ or ""), f"{where} is not in the diagram"


def test_the_merged_classes_are_one_class() -> None:
    from blockwatch.probes import ikev2, l2tp, openvpn, pptp, wireguard

    assert {m.MalformedReply for m in (ikev2, l2tp, openvpn, pptp, wireguard)} == {
        errors.MalformedReply}
    assert issubclass(errors.MalformedReply, ValueError)
    assert issubclass(errors.SocksReplyError, OSError)
