"""Configuration: the shipped default, errors with file:line, and the root-owner rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from readegress.detect.config import ConfigError, load_config, parse_config
from readegress.net.classify import DestinationClass


def test_default_config_follows_the_reference() -> None:
    cfg = load_config()
    cat = cfg.catalogue
    assert cfg.window_seconds == 120 and cfg.egress_classes == {DestinationClass.PUBLIC}
    high = {c.name for c in cat.classes if c.level == "high"}
    assert {"shadow", "ssh_private_key", "cloud_credentials", "kubernetes_credentials"} <= high
    for low in (
        "/etc/passwd",
        "/etc/group",
        "/root/.ssh/known_hosts",
        "/home/u/.ssh/authorized_keys",
    ):
        m = cat.match(low)
        assert m is not None and not m.alone, low
    for path in (
        "/etc/shadow",
        "/etc/gshadow-",
        "/home/u/.ssh/id_ecdsa",
        "/root/.kube/config",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/home/u/.netrc",
        "/home/u/.config/gcloud/application_default_credentials.json",
        "/home/u/.mozilla/firefox/abc.default/logins.json",
        "/etc/ssl/private/x.key",
    ):
        m = cat.match(path)
        assert m is not None and m.alone and m.weight >= 80, path
    assert cat.match("/home/u/.ssh/id_rsa.pub") is None
    assert {a.executable for a in cfg.approved} >= {"/usr/bin/ssh", "/usr/sbin/sshd"}


def test_every_problem_is_reported_with_file_and_line() -> None:
    text = """\
window_seconds = -5
egress_classes = ["public", "interplanetary"]
colour = "blue"

[[class]]
name = "keys"
level = "extreme"
paths = ["relative/path"]

[[approved]]
executable = "/usr/bin/ssh"
class = "nope"
owner = "x"
"""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "bad.toml")
    problems = e.value.problems
    want = {
        "bad.toml:1: window_seconds",
        "bad.toml:2: unknown destination class 'interplanetary'",
        "bad.toml:3: unknown key 'colour'",
        "bad.toml:7: level must be one of",
        "bad.toml:8: path pattern 'relative/path' must be absolute",
        "bad.toml:12: approved job names unknown class 'nope'",
    }
    for w in want:
        assert any(p.startswith(w) for p in problems), (w, problems)


def test_toml_syntax_error_has_line() -> None:
    with pytest.raises(ConfigError, match=r"^x.toml:3: "):
        parse_config("window_seconds = 1\n\nthreshold = = 2\n", "x.toml")


def test_approved_job_needs_owner() -> None:
    text = '[[class]]\nname = "k"\npaths = ["/k"]\n[[approved]]\nexecutable = "a"\nclass = "k"\n'
    with pytest.raises(ConfigError, match=r"x.toml:4: approved job needs an owner"):
        parse_config(text, "x.toml")


@pytest.mark.skipif(os.geteuid() != 0, reason="the owner rule applies when running as root")
def test_root_refuses_unsafe_config(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[[class]]\nname = "k"\npaths = ["/k"]\n')
    os.chmod(p, 0o644)
    assert load_config(p).catalogue.match("/k") is not None
    os.chmod(p, 0o664)
    with pytest.raises(ConfigError, match="writable by group or others"):
        load_config(p)
    os.chmod(p, 0o644)
    os.chown(p, 65534, 65534)
    with pytest.raises(ConfigError, match="not owned by root"):
        load_config(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")


# ----- layering, assets and classification ---------------------------------


def _write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_approved_only_file_is_a_config_on_its_own(tmp_path: Path) -> None:
    from readegress.detect.config import default_config, load_configs

    f = _write(
        tmp_path,
        "baseline.toml",
        '[[approved]]\nexecutable = "/usr/bin/rsync"\nclass = "ssh_private_key"\nowner = "ops"\n',
    )
    c = load_configs([f], check_owner=False)
    d = default_config()
    assert [x.name for x in c.catalogue.classes] == [x.name for x in d.catalogue.classes]
    assert c.approved[: len(d.approved)] == d.approved
    assert c.approved[-1].executable == "/usr/bin/rsync"
    assert c.threshold == d.threshold and c.path == f


def test_later_files_extend_earlier_ones(tmp_path: Path) -> None:
    from readegress.detect.config import load_configs

    a = _write(
        tmp_path, "a.toml", 'threshold = 60\n[[asset]]\ncriticality = "high"\nhosts = ["web-*"]\n'
    )
    b = _write(
        tmp_path,
        "b.toml",
        'window_seconds = 30\n[[class]]\nname = "shadow"\nlevel = "medium"\n'
        'paths = ["/etc/shadow"]\n[[class]]\nname = "vault"\nlevel = "high"\n'
        'paths = ["/etc/vault/*.key"]\n',
    )
    c = load_configs([a, b], check_owner=False)
    assert (c.threshold, c.window_seconds) == (60, 30.0)
    assert c.catalogue.by_name["shadow"].level == "medium"  # replaced by name
    assert c.catalogue.match("/etc/vault/x.key") is not None  # added
    assert c.catalogue.match("/root/.ssh/id_rsa") is not None  # inherited
    assert len(c.assets) == 1 and c.path == f"{a},{b}"


def test_problems_of_every_file_reported_together(tmp_path: Path) -> None:
    from readegress.detect.config import load_configs

    a = _write(tmp_path, "a.toml", 'threshold = "x"\n')
    b = _write(tmp_path, "b.toml", '\n[[asset]]\ncriticality = "huge"\nhosts = ["x"]\n')
    with pytest.raises(ConfigError) as e:
        load_configs([a, b], check_owner=False)
    assert e.value.problems[0].startswith(f"{a}:1:")
    assert e.value.problems[1].startswith(f"{b}:3:")


def test_priority_weighs_host_criticality_and_classification(tmp_path: Path) -> None:
    from readegress.detect.config import load_configs
    from readegress.detect.priority import data_classification, host_criticality, priority

    f = _write(
        tmp_path,
        "assets.toml",
        '[[asset]]\ncriticality = "critical"\nhosts = ["db-*"]\n'
        '[[asset]]\ncriticality = "low"\ndecoration = { name = "env", value = "dev" }\n'
        '[[asset]]\ncriticality = "high"\ndecoration = { name = "env", value = "dev" }\n',
    )
    c = load_configs([f], check_owner=False)
    assert host_criticality(c, "db-7") == "critical"
    assert host_criticality(c, "laptop", {"env": "dev"}) == "high"  # heaviest match wins
    assert host_criticality(c, "laptop") == "medium"
    assert data_classification(c, "ssh_private_key") == "restricted"
    assert data_classification(c, "sudoers") == "confidential"
    assert priority(c, 60, "db-7", "ssh_private_key") == 180  # 60 * 2.0 * 1.5
    assert priority(c, 60, "laptop", "account_lists") == 60  # 60 * 1.0 * 1.0


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ('[[asset]]\ncriticality = "high"\n', 2, "needs hosts or a decoration"),
        ('[[asset]]\ncriticality = "high"\ndecoration = "env"\n', 3, "decoration must be"),
        ('default_criticality = "urgent"\n', 1, "default_criticality must be one of"),
        ("[criticality_weights]\nhigh = -1\n", 1, "must be a lower_case name = number"),
        (
            '[[class]]\nname = "k"\npaths = ["/k"]\nclassification = "secret"\n',
            4,
            "classification must be one of",
        ),
    ],
)
def test_asset_and_classification_errors_name_the_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "f.toml")
    assert e.value.problems[0].startswith(f"f.toml:{line}:") and needle in str(e.value)
