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
        ("[tls]\ncontrol_sni = 'not a name'\n", "tls.control_sni"),
        ("[dns]\nsilent = ['ns.example.org']\n", "'ns.example.org' is not an IP address"),
        ("[baseline]\nendpoints = ['one.one.one.one:443']\n", "baseline.endpoints"),
        ("[[services]]\nname = 'x'\ndomains = [1]\n", "service 'x': domains must be"),
        ("[[services]]\nname = 'x'\n", "needs at least one of domains"),
        ("[[services]]\nname = 'x'\nurls = ['ftp://a']\n", "must be http(s)://"),
        ("[[services]]\nname = 'x'\nendpoints = ['a:99999']\n", "out of range"),
        ("[[services]]\nname = 'x'\ndomains = ['a.b']\ncolour = 1\n", "unknown key 'colour'"),
        ("[timeouts\n", "not valid TOML"),
        # issue #15: nesting, lines of array tables, where an unknown name was, consent
        ("a = " + "[" * 3000 + "]" * 3000 + "\n", "my.toml: values nested too deeply"),
        ("[[services]]\nname = 'a'\ndomains = ['a.b']\n\n[[services]]\n"
         "name = 'x'\ndomains = 5\n", "my.toml:5: services[1]: service 'x': domains must be"),
        ("[[vpn]]\nname = 'v'\nprotocol = 'openvpn'\nhost = 'vpn.test'\nport = 1194\n"
         "key_file = '/nonexistent.key'\n", "my.toml:1: vpn[0].key_file"),
        ("consent = 'yes'\n", "my.toml:1: consent: Input should be a valid boolean"),
    ],
)
def test_bad_config_names_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.toml")
    assert expected in str(info.value)


def test_an_unknown_service_says_where_it_was_named() -> None:
    cfg = parse_config("[probes]\nservices = ['nosuch']\n", "my.toml")
    with pytest.raises(ConfigError, match=r"^my\.toml: probes\.services: unknown service 'nosuch'"):
        cfg.selected_services()
    with pytest.raises(ConfigError, match=r"^--service: unknown service 'other'"):
        cfg.selected_services(["other"])


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


# --- schedule groups and consent -----------------------------------------------------------------

GROUPS = """
consent = true

[[schedules]]
name = "hourly"
services = ["kakaotalk"]
categories = ["vpn"]
every = "1h"
spread = "10m"
max_runtime = "20m"
vantage = "home"

[[schedules]]
name = "nightly"
cron = "30 2 * * 1-5"
"""


def test_schedule_groups_parse_durations_and_select_services() -> None:
    cfg = parse_config(GROUPS + "\n[probes]\nservices = ['line']\n", "my.toml")
    assert cfg.consent is True
    hourly, nightly = cfg.schedules
    assert (hourly.every, hourly.spread, hourly.max_runtime) == (3600, 600, 1200)
    assert hourly.vantage == "home" and nightly.cron == "30 2 * * 1-5"
    names = [s.name for s in cfg.group_services(hourly)]
    assert "kakaotalk" in names and "line" not in names
    assert {s.category for s in cfg.group_services(hourly) if s.name != "kakaotalk"} == {"vpn"}
    assert [s.name for s in cfg.group_services(nightly)] == ["line"]  # the run default
    assert cfg.schedule("nightly") is nightly
    with pytest.raises(ConfigError, match="no schedule group 'weekly'"):
        cfg.schedule("weekly")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[schedules]]\nname = 'a'\n", "my.toml:1: schedules[0]: give exactly one of every"),
        ("[[schedules]]\nname = 'a'\nevery = '1h'\ncron = '* * * * *'\n", "exactly one"),
        ("[[schedules]]\nname = 'a'\nevery = 'often'\n",
         "my.toml:3: schedules[0].every: 'often' is not a duration"),
        ("[[schedules]]\nname = 'a'\nevery = '0s'\n", "schedules[0].every: Input should be"),
        ("[[schedules]]\nname = 'a'\nevery = '1m'\nspread = '2m'\n", "spread must not be longer"),
        ("[[schedules]]\nname = 'a'\ncron = '61 * * * *'\n", "my.toml:3: schedules[0].cron:"),
        ("[[schedules]]\nname = 'a'\ncron = '* * *'\n", "must have 5 fields"),
        ("[[schedules]]\nname = 'a b'\nevery = 60\n", "schedules[0].name: String should match"),
        ("[[schedules]]\nname = 'a'\nevery = 60\ncolour = 1\n",
         "my.toml:4: schedules[0].colour: unknown key"),
        ("[[schedules]]\nname = 'a'\nevery = 60\n[[schedules]]\nname = 'b'\nevery = 'x'\n",
         "my.toml:6: schedules[1].every"),
        ("[[schedules]]\nname = 'a'\nevery = 60\n[[schedules]]\nname = 'a'\nevery = 60\n",
         "my.toml:5: schedules[1].name: group 'a' is defined twice"),
        ("[[schedules]]\nname = 'a'\nevery = 60\nservices = ['nosuch']\n",
         "my.toml:4: schedules[0].services: unknown service 'nosuch'"),
        ("[[schedules]]\nname = 'a'\nevery = 60\ncategories = ['cats']\n",
         "schedules[0].categories: unknown category 'cats'"),
        ("[[schedules]]\nname = 'a'\nevery = true\n", "schedules[0].every"),
        ("consent = 'maybe'\n", "my.toml:1: consent: Input should be a valid boolean"),
    ],
)
def test_bad_schedule_names_the_group_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.toml")
    assert expected in str(info.value)


def test_cron_weekdays_mean_what_crontab_means() -> None:
    import datetime as dt

    from apscheduler.triggers.cron import CronTrigger

    from blockwatch.scheduler.groups import _cron_fields

    trigger = CronTrigger(**_cron_fields("0 3 * * 1-5"), timezone=dt.UTC)
    saturday = dt.datetime(2026, 11, 28, 12, tzinfo=dt.UTC)  # 2026-11-28 is a Saturday
    fire = trigger.get_next_fire_time(None, saturday)
    assert fire is not None and fire.strftime("%a %H:%M") == "Mon 03:00"
    sunday = CronTrigger(**_cron_fields("0 0 * * 0"), timezone=dt.UTC)
    fire = sunday.get_next_fire_time(None, saturday)
    assert fire is not None and fire.strftime("%a") == "Sun"


def test_example_schedules_parse_when_uncommented() -> None:
    text = (ROOT / "config.example.toml").read_text()
    block = text[text.index("# [[schedules]]"):]
    body = "\n".join(line[2:] if line.startswith("# ") else "" for line in block.splitlines())
    cfg = parse_config(body, "example")
    assert [(g.name, g.every, g.cron) for g in cfg.schedules] == [
        ("messaging", 3600.0, None), ("nightly-all", None, "30 2 * * *")]
    assert load_config(ROOT / "config.example.toml").consent is False


def test_which_services_a_run_measures(tmp_path: Path) -> None:
    from blockwatch.probes.catalogue import load_catalogue

    catalogue = set(load_catalogue())
    listed = tmp_path / "lists" / "mine.csv"
    listed.parent.mkdir()
    listed.write_text("url,category_code\nhttps://a.example/,NEWS\nhttps://b.example/,HUMR\n")
    cfg_path = tmp_path / "bw.toml"

    def run_services(text: str, names: list[str] | None = None) -> set[str]:
        cfg_path.write_text(text)
        cfg = load_config(cfg_path)
        return {s.name for s in cfg.selected_services(names, cfg.input_services(
            cfg.input_lists()))}

    # unset: the whole catalogue, unless test lists give the run its targets
    assert run_services("") == catalogue
    with_list = '[inputs]\nfiles = ["lists/mine.csv"]\n'  # relative to the config file
    assert run_services(with_list) == {"https://a.example/", "https://b.example/"}
    assert run_services(with_list + 'categories = ["NEWS"]\n') == {"https://a.example/"}
    # [] means none; ["all"] every one; names add to the lists' URLs
    assert run_services('[probes]\nservices = ["all"]\n') == catalogue
    assert run_services(with_list + '[probes]\nservices = ["line"]\n') == {
        "line", "https://a.example/", "https://b.example/"}
    assert run_services(with_list + "[probes]\nservices = []\n") == {
        "https://a.example/", "https://b.example/"}
    with pytest.raises(ConfigError, match="nothing to measure"):
        run_services("[probes]\nservices = []\n")
    with pytest.raises(ConfigError, match="unknown service 'nope'"):
        run_services("", ["nope"])


def test_a_missing_test_list_is_named(tmp_path: Path) -> None:
    from blockwatch.inputs import InputError

    cfg = parse_config('[inputs]\nfiles = ["/nonexistent/list.txt"]\n', "my.toml")
    with pytest.raises(InputError, match=r"/nonexistent/list\.txt: cannot read"):
        cfg.input_lists()
