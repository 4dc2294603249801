"""Config validation: every mistake names the key (and line), nothing crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockwatch.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid_and_documents_every_section() -> None:
    cfg = load_config(ROOT / "config.example.toml")
    assert cfg.dns.resolvers == ["system"]
    text = (ROOT / "config.example.toml").read_text()
    for section in ("vantage", "storage", "timeouts", "concurrency", "dns", "tls", "probes",
                    "baseline"):
        assert f"[{section}]" in text


def test_no_file_means_defaults_in_xdg_data_dir(tmp_path: Path) -> None:
    cfg = load_config(None)
    expected = tmp_path / "xdg-data" / "blockwatch" / "blockwatch.db"
    assert cfg.storage_url() == f"sqlite:///{expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[timeouts]\ndns = -1\n", "my.toml:2: timeouts.dns: Input should be greater than 0"),
        ("[timeouts]\ndns = 'fast'\n", "my.toml:2: timeouts.dns:"),
        ("[vantage]\nnmae = 'x'\n", "my.toml:2: vantage.nmae: unknown key"),
        ("colour = 1\n", "my.toml:1: colour: unknown key"),
        ("[dns]\nresolvers = ['ftp://x']\n", "dns.resolvers: resolver 'ftp://x'"),
        ("[dns]\nresolvers = ['udp://dns.example']\n", "needs an IP address"),
        ("[concurrency]\nglobal = 0\n", "my.toml:2: concurrency.global:"),
        ("[probes]\nscope = ['10.0.0.0/33']\n", "probes.scope: '10.0.0.0/33' is neither"),
        ("[probes]\nprobes = ['smtp']\n", "probes.probes[0]"),
        ("[vantage]\ncountry = 'Korea'\n", "vantage.country"),
        ("[vantage]\nsocks5_proxy = 'http://x'\n", "socks5://HOST:PORT"),
        ("[storage]\nurl = 'mysql://x'\n", "storage.url"),
        ("[tls]\nca_bundle = '/nonexistent.pem'\n", "does not exist"),
        ("[baseline]\nendpoints = ['one.one.one.one:443']\n", "baseline.endpoints"),
        ("[[services]]\nname = 'x'\ndomains = [1]\n", "service 'x': domains must be"),
        ("[[services]]\nname = 'x'\n", "needs at least one of domains"),
        ("[[services]]\nname = 'x'\nurls = ['ftp://a']\n", "must be http(s)://"),
        ("[[services]]\nname = 'x'\nendpoints = ['a:99999']\n", "out of range"),
        ("[[services]]\nname = 'x'\ndomains = ['a.b']\ncolour = 1\n", "unknown key 'colour'"),
        ("[timeouts\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.toml")
    assert expected in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(bad)


def test_custom_service_and_selection() -> None:
    cfg = parse_config(
        "[probes]\nservices = ['kakaotalk']\n"
        "[[services]]\nname = 'mysite'\nurls = ['https://mysite.test/']\n"
    )
    assert [s.name for s in cfg.selected_services()] == ["kakaotalk"]
    assert [s.name for s in cfg.selected_services(["mysite", "line"])] == ["mysite", "line"]
    with pytest.raises(ConfigError, match="unknown service 'nosuch'"):
        cfg.selected_services(["nosuch"])
