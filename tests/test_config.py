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
