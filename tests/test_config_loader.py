"""protocol/config.py: the one dataclass -> TOML -> flags loader of the agent, hostd and the controller.

A small configuration of its own exercises every kind of field; the daemons' own tests
(test_config_errors, test_hostd_config, test_downloads) check their configurations.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest
from inprocess import run_main

from limiquantix.protocol import config as loader
from limiquantix.protocol.config import ConfigError

SECRET_ENV = "LQX_TEST_LOADER_SECRET"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Part:
    """A nested table."""

    id: str
    """Its id."""
    weight: float = 1.0
    """How much it counts."""
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Free-form tags."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sample:
    """Every kind of field the loader converts."""

    name: str = "x"
    """A string; 100% of it."""
    count: int = 3
    """A whole number."""
    ratio: float = 0.5
    """A number."""
    enabled: bool = False
    """A switch."""
    names: tuple[str, ...] = ("a", "b")
    """A list of strings."""
    secret: str = dataclasses.field(default="", metadata={"secret_env": SECRET_ENV})
    """Never a flag."""
    main: Part = dataclasses.field(default_factory=lambda: Part(id="main"))
    """A [main] table."""
    parts: tuple[Part, ...] = dataclasses.field(default=(), metadata={"key": "part"})
    """[[part]] tables."""

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigError("count must be >= 0")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample", formatter_class=loader.FieldHelpFormatter)
    p.add_argument("--config", type=Path)
    loader.add_field_flags(p, Sample)
    return p


def load(argv: list[str], tmp_path: Path) -> Sample:
    return loader.load(Sample, parser(), argv, tmp_path / "absent.toml")[0]


def test_every_kind_of_field_from_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "sample.toml"
    cfg.write_text(
        'name = "n"\ncount = 7\nratio = 2\nenabled = true\nnames = ["p", "q"]\n'
        '[main]\nid = "m"\ntags = { role = "web" }\n'
        '[[part]]\nid = "p1"\n[[part]]\nid = "p2"\nweight = 0.25\n'
    )
    c = load(["--config", str(cfg)], tmp_path)
    assert (c.name, c.count, c.ratio, c.enabled, c.names) == ("n", 7, 2.0, True, ("p", "q"))
    assert isinstance(c.ratio, float)  # TOML's 2 is a fine float
    assert c.main == Part(id="m", tags={"role": "web"})
    assert [(p.id, p.weight) for p in c.parts] == [("p1", 1.0), ("p2", 0.25)]


def test_flags_win_and_take_strings(tmp_path: Path) -> None:
    cfg = tmp_path / "sample.toml"
    cfg.write_text('name = "file"\ncount = 1\n')
    c = load(["--config", str(cfg), "--name", "flag", "--count", "9", "--ratio", "1.5", "--names", "x, y,,z"], tmp_path)
    assert (c.name, c.count, c.ratio, c.names) == ("flag", 9, 1.5, ("x", "y", "z"))
    assert load(["--enabled"], tmp_path).enabled is True  # a boolean flag alone means true
    assert load(["--enabled", "off"], tmp_path).enabled is False
    assert load([], tmp_path) == Sample()  # no --config and no default file: the defaults


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1, "also": 2}, r"^unknown configuration keys: also, bogus$"),
        ({"count": "many"}, r"^count must be a whole number, not 'many'$"),
        ({"count": 1.5}, r"^count must be a whole number, not 1\.5$"),
        ({"count": True}, r"^count must be a whole number"),
        ({"ratio": [1]}, r"^ratio must be a number, not a list$"),
        ({"enabled": "maybe"}, r"^enabled must be true or false$"),
        ({"name": 5}, r"^name must be a string$"),
        ({"names": [1, 2]}, r"^names must be a list of strings$"),
        ({"count": -1}, r"^count must be >= 0$"),  # the dataclass's own check, the same error
        ({"main": "m"}, r"^\[main\] must be a table$"),
        ({"main": {"id": "m", "idd": 1}}, r"^unknown key 'idd' in \[main\] \(known: id, weight, tags\)$"),
        ({"main": {"id": "m", "tags": {"a": 1}}}, r"^tags must be a table of strings$"),
        ({"main": {}}, r"^\[main\]: .*missing 1 required keyword-only argument: 'id'"),
        ({"part": {"id": "p"}}, r"^\[\[part\]\] must be an array of tables$"),
        ({"part": [{"id": "p", "x": 1}]}, r"^unknown key 'x' in \[\[part\]\]"),
        ({"parts": []}, r"^unknown configuration keys: parts$"),  # the TOML key is part
    ],
)
def test_bad_values_are_refused_by_name(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        loader.from_mapping(Sample, data)


def test_a_long_bad_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        loader.from_mapping(Sample, {"count": "9" * 10_000 + "x"})
    assert len(str(info.value)) < 100


def test_grouping_tables_and_dashes() -> None:
    # The agent's file: tables only group keys; a key may be spelled with dashes.
    c = loader.from_mapping(Sample, {"numbers": {"count": 4, "the-ratio": {"ratio": 3}}}, group_tables=True)
    assert (c.count, c.ratio) == (4, 3.0)
    assert loader.from_mapping(Sample, {"count": 5}).count == 5


def test_a_secret_is_never_a_flag_and_its_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = run_main(parser().parse_args, "--secret", "hunter2")  # argparse's exit: its status and stderr
    assert out.returncode == 2 and "--secret is refused" in out.stderr and SECRET_ENV in out.stderr
    assert "hunter2" not in out.stderr
    cfg = tmp_path / "sample.toml"
    cfg.write_text('secret = "from-file"\n')
    assert load(["--config", str(cfg)], tmp_path).secret == "from-file"
    monkeypatch.setenv(SECRET_ENV, "from-env")
    assert load(["--config", str(cfg)], tmp_path).secret == "from-env"


def test_unreadable_or_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(["--config", str(tmp_path / "missing.toml")], tmp_path)
    broken = tmp_path / "broken.toml"
    broken.write_text("count = = 1")
    with pytest.raises(ConfigError, match="broken.toml"):
        load(["--config", str(broken)], tmp_path)


def test_help_is_each_fields_docstring_and_default() -> None:
    text = " ".join(parser().format_help().split())
    assert "--count COUNT A whole number. (default: 3)" in text
    assert "--names NAMES A list of strings. Comma-separated. (default: a,b)" in text
    assert "A string; 100% of it. (default: x)" in text  # argparse's %-formatting is escaped
    assert "--secret" not in text and "--main" not in text and "--part" not in text
    assert "\0" not in text


def test_dump_toml_reads_back_the_same(tmp_path: Path) -> None:
    config = Sample(
        name='quote " and \\ backslash', count=0, enabled=True, names=(), secret="s",
        main=Part(id="m", tags={"k": "v"}), parts=(Part(id="p1"), Part(id="p2", weight=0.1)),
    )  # fmt: skip
    text = loader.dump_toml(config, "sample configuration")
    assert text.startswith("# sample configuration\n") and "# A whole number." in text
    assert "secret" not in text.replace("# Never a flag.", "")  # a secret is never written out
    cfg = tmp_path / "dumped.toml"
    cfg.write_text(text)
    assert load(["--config", str(cfg)], tmp_path) == dataclasses.replace(config, secret="")


def test_the_checks_the_daemons_share() -> None:
    """listen, log_format and the server's TLS files, refused by name the same way in every daemon."""
    check_listen, check_server_tls = loader.check_listen, loader.check_server_tls
    check_listen("127.0.0.1:8080")
    check_listen("[::1]:0")
    for bad in ("8080", "host:", ":80", "host:http"):
        with pytest.raises(ConfigError, match=f"listen must be host:port, not {bad!r}"):
            check_listen(bad)
    loader.check_log_format("json")
    with pytest.raises(ConfigError, match="log_format must be text or json"):
        loader.check_log_format("xml")

    @dataclasses.dataclass
    class Server:
        tls_cert_file: str = ""
        tls_key_file: str = ""
        tls_client_ca_file: str = ""

    check_server_tls(Server())
    check_server_tls(Server("c.pem", "c.key", "ca.pem"))
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        check_server_tls(Server(tls_key_file="c.key"))
    with pytest.raises(ConfigError, match="tls_client_ca_file needs tls_cert_file and tls_key_file"):
        check_server_tls(Server(tls_client_ca_file="ca.pem"))
    with pytest.raises(ConfigError, match="tls_key_file and tls_cert_file go together"):
        loader.check_together(Server(tls_cert_file="c.pem"), "tls_key_file", "tls_cert_file")
