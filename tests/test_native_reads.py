"""Native read source: catalogue → marks → SensitiveRead, on real files and processes.

Catalogues are TOML strings over temp directories; homes come from a fake
passwd and home root where ``~/`` expansion is under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import polling
from readegress.detect.config import Config, parse_config
from readegress.detect.events import SensitiveRead
from readegress.kernel.procfs import read_start_ticks
from readegress.sources.native_reads import (
    Homes,
    NativeReadSource,
    catalogue_path,
    expand_catalogue,
    find_homes,
)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")

CAT = os.path.realpath(shutil.which("cat") or "/usr/bin/cat")


def wait_for(pred: Callable[[], object], timeout: float = 3.0) -> bool:
    # fanotify events arrive within milliseconds: poll finely, give up sooner.
    return bool(polling.wait_for(pred, timeout, step=0.005))


def catalogue_config(keys: Path, *, extra_class: str = "") -> Config:
    return parse_config(
        f"""
[[class]]
name = "test_key"
level = "high"
paths = ["{keys}/id_*"]
exclude = ["{keys}/*.pub"]

[[class]]
name = "test_list"
level = "low"
paths = ["{keys}/known_hosts"]
{extra_class}
""",
        "test.toml",
    )


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    (d / "id_rsa").write_text("k" * 1234)
    (d / "id_rsa.pub").write_text("p")
    (d / "known_hosts").write_text("h" * 10)
    (d / "notes").write_text("n")
    return d


class Reads:
    """Thread-safe collector for on_read."""

    def __init__(self) -> None:
        self.items: list[SensitiveRead] = []
        self.lock = threading.Lock()

    def __call__(self, r: SensitiveRead) -> None:
        with self.lock:
            self.items.append(r)

    def of(self, path: str) -> list[SensitiveRead]:
        with self.lock:
            return [r for r in self.items if r.path == path]


# -- expansion (filesystem only, no fanotify) ----------------------------------


def test_expand_marks_files_and_the_directory_of_a_wildcard(keys: Path) -> None:
    plan = expand_catalogue(catalogue_config(keys).catalogue, homes=Homes((), ()))
    assert dict(plan.files) == {
        f"{keys}/id_rsa": "test_key",
        f"{keys}/known_hosts": "test_list",
    }
    assert plan.dirs == (str(keys),)  # id_* may be created later
    assert plan.perm_files == (f"{keys}/id_rsa",)  # level high only
    assert (plan.skipped, plan.walk_truncated) == (0, False)


def test_expand_homes_double_star_caps_and_symlinks(tmp_path: Path) -> None:
    home_root = tmp_path / "home"
    alice = home_root / "alice"
    (alice / ".ssh").mkdir(parents=True)
    (alice / ".ssh" / "id_ed25519").write_text("x")
    (alice / "proj" / "app").mkdir(parents=True)
    (alice / "proj" / "app" / ".env").write_text("SECRET=1")
    (alice / ".netrc").write_text("machine x")
    elsewhere = tmp_path / "data" / "bob"
    (elsewhere / ".ssh").mkdir(parents=True)
    real_key = tmp_path / "vault" / "key"
    real_key.parent.mkdir()
    real_key.write_text("k")
    os.symlink(real_key, alice / ".ssh" / "id_linked")
    passwd = tmp_path / "passwd"
    passwd.write_text(
        f"root:x:0:0::/root:/bin/sh\n"
        f"svc:x:999:999::{tmp_path}/svc:/bin/sh\n"
        f"bob:x:1001:1001::{elsewhere}:/bin/sh\n"
        "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"
    )
    homes = find_homes(str(passwd), str(home_root), root_home=str(tmp_path / "no-root"))
    assert homes == Homes((str(alice),), (str(elsewhere),))

    # The catalogue's ~ only matches /root and /home/<user>; spell the fake
    # home root out so the same globs apply to it.
    cfg = parse_config(
        f"""
[[class]]
name = "keys"
level = "high"
paths = ["{home_root}/*/.ssh/id_*"]
exclude = ["{home_root}/*/.ssh/*.pub"]

[[class]]
name = "env"
level = "medium"
paths = ["{home_root}/*/**/.env", "{home_root}/*/.netrc"]
"""
    )
    plan = expand_catalogue(cfg.catalogue, homes=homes, extra_paths=[str(tmp_path / "x" / "y")])
    assert set(plan.files) == {
        f"{alice}/.ssh/id_ed25519",
        f"{alice}/.ssh/id_linked",
        f"{alice}/proj/app/.env",
        f"{alice}/.netrc",
    }
    assert set(plan.dirs) == {f"{alice}/.ssh", f"{alice}/proj/app"}
    # fanotify reports the resolved path: it maps back to the catalogue path.
    assert catalogue_path(plan, str(real_key)) == f"{alice}/.ssh/id_linked"
    assert plan.extra == {str(tmp_path / "x" / "y")}
    assert plan.dirs_refused == 1  # the extra path's parent does not exist

    capped = expand_catalogue(cfg.catalogue, homes=homes, max_marks=2)
    assert len(capped.files) + len(capped.dirs) == 2
    assert set(capped.files) <= {f"{alice}/.ssh/id_ed25519", f"{alice}/.ssh/id_linked"}
    assert capped.skipped == 4

    tiny = expand_catalogue(cfg.catalogue, homes=homes, walk_budget=3)
    assert tiny.walk_truncated


def test_real_home_expansion_never_marks_top_level_or_home_directories() -> None:
    cfg = parse_config(
        '[[class]]\nname = "h"\nlevel = "high"\npaths = ["~/.netrc", "~/*.key", "/etc/*.key"]\n'
    )
    plan = expand_catalogue(cfg.catalogue)
    assert all(d.count("/") >= 2 and d not in plan.homes for d in plan.dirs)
    assert plan.dirs_refused >= len(plan.homes)


# -- live fanotify -------------------------------------------------------------


@root_only
@pytest.mark.parametrize("dir_watch", ["entry", "child"])
def test_cat_of_a_marked_file_is_a_read_with_the_child_identity(keys: Path, dir_watch: str) -> None:
    """Notification path (no permission group): `cat FILE -` stays alive on stdin,
    so its /proc stat can be read while it lives and compared."""
    reads = Reads()
    key = f"{keys}/id_rsa"
    src = NativeReadSource(
        catalogue_config(keys),
        reads,
        host="h1",
        permission_classes=(),
        remark_interval=0,
        dir_watch=dir_watch,
    )
    with src:
        assert src.plan is not None and src.plan.perm_files == ()
        cat = subprocess.Popen([CAT, key, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: bool(reads.of(key)))
            ticks = read_start_ticks(cat.pid)
        finally:
            cat.communicate(b"", timeout=5)
        # Siblings in the marked directory: not in the catalogue, or excluded.
        subprocess.run([CAT, f"{keys}/notes", f"{keys}/id_rsa.pub"], stdout=subprocess.DEVNULL)
        time.sleep(0.2)
        s = src.stats()
    r = reads.of(key)[0]
    assert (r.host, r.source, r.size) == ("h1", "fanotify", 1234)
    assert r.proc.pid == cat.pid and r.proc.start == ticks is not None
    assert r.proc.executable == CAT and r.proc.cmdline == f"{CAT} {key} -"
    assert r.proc.ppid == os.getpid() and r.proc.uid == 0
    assert r.proc.pgid == os.getpgid(0) and r.proc.sid == os.getsid(0)
    assert abs(r.time - time.time()) < 10
    assert {x.path for x in reads.items} == {key}
    if dir_watch == "entry":
        # Siblings in a watched directory raise no event at all.
        assert s.unmatched == 0 and s.marks_entry_dirs == 1 and s.marks_dirs == 0
    else:
        assert s.unmatched >= 2 and s.marks_dirs == 1
    assert s.reads_emitted == len(reads.items)
    assert s.pidfd and not s.perm_available  # permission_classes=(): no group at all


@root_only
def test_file_created_after_marking_is_seen(keys: Path) -> None:
    """The entry event marks the new file by inode; opens from then on are seen.
    (An open in the milliseconds before the mark is not: see the README's limits.)"""
    reads = Reads()
    src = NativeReadSource(catalogue_config(keys), reads, permission_classes=(), remark_interval=0)
    with src:
        new = keys / "id_ed25519"
        new.write_text("new key!")  # our own open: not reported
        assert wait_for(lambda: src.stats().entry_marked == 1, 1.0)
        p = subprocess.Popen([CAT, str(new), "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: bool(reads.of(str(new))))
        finally:
            p.communicate(b"", timeout=5)
    r = reads.of(str(new))[0]
    assert r.proc.pid == p.pid and r.proc.executable == CAT and r.size == 8
    assert all(x.proc.pid != os.getpid() for x in reads.items)


@root_only
def test_permission_path_identifies_twenty_short_lived_cats(keys: Path) -> None:
    reads = Reads()
    key = f"{keys}/id_rsa"
    with NativeReadSource(catalogue_config(keys), reads, remark_interval=0) as src:
        pids = []
        for _ in range(20):
            p = subprocess.Popen([CAT, key], stdout=subprocess.DEVNULL)
            p.wait(timeout=5)
            pids.append(p.pid)
        assert wait_for(lambda: len(reads.of(key)) >= 20)
        time.sleep(0.1)
        s = src.stats()
    got = reads.of(key)
    assert sorted(r.proc.pid for r in got) == sorted(pids)  # one read per cat, no duplicates
    assert all(r.proc.executable == CAT and r.proc.start is not None for r in got)
    assert all(r.proc.cmdline == f"{CAT} {key}" and r.size == 1234 for r in got)
    assert s.perm_available and s.perm_answered >= 20 and s.perm_watchdog == 0
    assert s.marks_perm == 1 and s.marks_entry_dirs == 1 and s.marks_files == 2
    print(f"\n20 cats: max hold {s.perm_max_hold_us} µs, identity missed {s.identity_missed}")


@root_only
def test_repeats_merge_but_a_new_process_or_image_does_not(keys: Path) -> None:
    reads = Reads()
    key = f"{keys}/id_rsa"
    code = f"import os\nfor _ in range(5): os.close(os.open({key!r}, os.O_RDONLY))\n"
    with NativeReadSource(catalogue_config(keys), reads, remark_interval=0) as src:
        subprocess.run([sys.executable, "-c", code], check=True, timeout=10)
        subprocess.run([CAT, key], stdout=subprocess.DEVNULL, check=True)
        assert wait_for(lambda: len(reads.of(key)) >= 2)
        time.sleep(0.1)
        s = src.stats()
    got = reads.of(key)
    assert len(got) == 2
    assert {os.path.basename(r.proc.executable) for r in got} >= {"cat"}
    # The four repeats of the loop merged: in the source, or already in the
    # permission group (same pid and file within a second: no identity read).
    assert s.merged + s.perm_repeats >= 4


@root_only
def test_update_follows_catalogue_changes_and_extra_paths(keys: Path, tmp_path: Path) -> None:
    reads = Reads()
    other = tmp_path / "other"
    other.mkdir()
    (other / "token").write_text("t" * 7)
    explicit = tmp_path / "explicit.secret"
    explicit.write_text("e")
    src = NativeReadSource(
        catalogue_config(keys), reads, extra_paths=[str(explicit)], remark_interval=0
    )
    with src:
        assert src.plan is not None and str(explicit) in src.plan.perm_files
        subprocess.run([CAT, str(other / "token"), str(explicit)], stdout=subprocess.DEVNULL)
        assert wait_for(lambda: bool(reads.of(str(explicit))))
        assert not reads.of(str(other / "token"))
        tok = f'[[class]]\nname = "tok"\nlevel = "high"\npaths = ["{other}/token"]\n'
        plan = src.update(catalogue_config(keys, extra_class=tok))
        assert f"{other}/token" in plan.files and f"{other}/token" in plan.perm_files
        subprocess.run([CAT, str(other / "token")], stdout=subprocess.DEVNULL)
        assert wait_for(lambda: bool(reads.of(str(other / "token"))))
        s = src.stats()
    assert reads.of(str(other / "token"))[0].size == 7
    assert s.remarks == 2 and s.marks_perm == 3


@root_only
def test_remark_thread_picks_up_a_replaced_file(tmp_path: Path) -> None:
    """A file named literally gets an inode mark only (as /etc/shadow does: /etc
    is never a directory mark). Replaced by a rename, as shadow-utils does, the
    new inode is covered once the re-mark runs."""
    d = tmp_path / "etcish"
    d.mkdir()
    target = d / "shadow"
    target.write_text("old")
    cfg = parse_config(f'[[class]]\nname = "s"\nlevel = "high"\npaths = ["{target}"]\n')
    reads = Reads()
    with NativeReadSource(cfg, reads, permission_classes=(), remark_interval=0.2) as src:
        tmp = d / "nshadow"
        tmp.write_text("new content")
        os.rename(tmp, target)  # the new inode carries no mark yet
        assert wait_for(lambda: src.stats().remarks >= 2)
        p = subprocess.Popen(
            [CAT, str(target), "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        try:
            assert wait_for(lambda: bool(reads.of(str(target))))
        finally:
            p.communicate(b"", timeout=5)
    assert reads.of(str(target))[0].size == len("new content")


# -- entry events: new files marked, renames noticed ----------------------------


@pytest.fixture
def home_keys(tmp_path: Path) -> Path:
    """A home-like tree made for the test (never a real user's files)."""
    ssh = tmp_path / "home" / "alice" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "id_rsa").write_text("k" * 1234)
    (ssh / "known_hosts").write_text("h" * 10)
    (ssh / "config").write_text("c")
    return ssh


def _cat_alive(path: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([CAT, path, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


@root_only
def test_matching_file_created_or_renamed_into_place_is_marked_within_a_second(
    home_keys: Path,
) -> None:
    reads = Reads()
    cfg = catalogue_config(home_keys)
    with NativeReadSource(cfg, reads, remark_interval=0) as src:
        assert src.stats().entry_available
        # Created by another process, then read by a short-lived cat (held:
        # the new key is a high-class file, so it gets a permission mark).
        created = home_keys / "id_ed25519"
        t0 = time.monotonic()
        subprocess.run(["/bin/sh", "-c", f"printf new-key > {created}"], check=True)
        assert wait_for(lambda: src.stats().entry_marked >= 1, 1.0)
        marked_after = time.monotonic() - t0
        assert marked_after < 1.0
        subprocess.run([CAT, str(created)], stdout=subprocess.DEVNULL, check=True)
        assert wait_for(lambda: bool(reads.of(str(created))))
        # Written under a temporary name, renamed into place (as ssh-keygen
        # and editors do): the rename names it.
        tmp = home_keys / ".tmp-upload"
        tmp.write_text("renamed key")
        placed = home_keys / "id_ecdsa"
        t0 = time.monotonic()
        os.rename(tmp, placed)
        assert wait_for(lambda: src.stats().entry_marked >= 2, 1.0)
        assert time.monotonic() - t0 < 1.0
        cat = _cat_alive(str(placed))
        try:
            assert wait_for(lambda: bool(reads.of(str(placed))))
        finally:
            cat.communicate(b"", timeout=5)
        # Neighbours opened by every ssh: no event reaches this process.
        before = src.stats()
        subprocess.run(
            [CAT, str(home_keys / "config"), str(home_keys / "known_hosts")] * 10,
            stdout=subprocess.DEVNULL,
            check=True,
        )
        time.sleep(0.2)
        after = src.stats()
    assert reads.of(str(created))[0].size == len("new-key")
    assert reads.of(str(created))[0].proc.executable == CAT
    got = reads.of(str(placed))[0]
    assert got.proc.pid == cat.pid and got.size == len("renamed key")
    assert after.marks_perm == 3 and after.unmatched == 0
    # known_hosts is a marked catalogue file (10 opens: merged to one read);
    # config is not: it raised nothing.
    assert after.events - before.events <= 10 and after.unmatched == before.unmatched
    assert not reads.of(str(home_keys / "config"))
    print(f"\ncreated file marked after {marked_after * 1000:.1f} ms")


@root_only
@pytest.mark.parametrize("permission", [True, False])
def test_rename_out_of_a_marked_name_is_noticed(
    home_keys: Path, tmp_path: Path, permission: bool
) -> None:
    """`mv ~/.ssh/id_rsa /tmp/x; cat /tmp/x` still reads the key: the inode
    keeps its mark, the rename is counted, and the read is reported under the
    catalogue name. A new file at the old name is marked again."""
    reads = Reads()
    key = home_keys / "id_rsa"
    stolen = tmp_path / "stolen"
    classes = None if permission else ()
    with NativeReadSource(
        catalogue_config(home_keys), reads, permission_classes=classes, remark_interval=0
    ) as src:
        os.rename(key, stolen)
        assert wait_for(lambda: src.stats().renamed_away == 1, 1.0)
        cat = _cat_alive(str(stolen))
        try:
            assert wait_for(lambda: bool(reads.of(str(key))))
        finally:
            cat.communicate(b"", timeout=5)
        key.write_text("replacement")
        assert wait_for(lambda: src.stats().entry_marked == 1, 1.0)
        subprocess.run(["/bin/rm", str(stolen)], check=True)
        time.sleep(0.1)
        s = src.stats()
    r = reads.of(str(key))[0]
    assert r.proc.pid == cat.pid and r.size == 1234  # the renamed file, not the new one
    assert s.renamed_reads >= 1 and s.renamed_away == 1 and s.deleted_marked == 0


@root_only
def test_child_marks_are_the_fallback_where_entry_events_are_off(home_keys: Path) -> None:
    reads = Reads()
    with NativeReadSource(
        catalogue_config(home_keys), reads, remark_interval=0, dir_watch="child"
    ) as src:
        new = home_keys / "id_new"
        new.write_text("n")
        cat = _cat_alive(str(new))
        try:
            assert wait_for(lambda: bool(reads.of(str(new))))
        finally:
            cat.communicate(b"", timeout=5)
        s = src.stats()
    assert s.marks_dirs == 1 and s.marks_entry_dirs == 0 and s.entry_marked == 0


def test_dir_watch_is_validated(keys: Path) -> None:
    with pytest.raises(ValueError, match="dir_watch"):
        NativeReadSource(catalogue_config(keys), Reads(), dir_watch="inotify")


def test_entry_dirs_cover_parents_of_marked_files_and_refused_dirs(tmp_path: Path) -> None:
    home = tmp_path / "home" / "bob"
    (home / ".ssh").mkdir(parents=True)
    (home / ".netrc").write_text("n")
    (home / ".ssh" / "id_rsa").write_text("k")
    (tmp_path / "etcish").mkdir()
    (tmp_path / "etcish" / "shadow").write_text("s")
    # Spelled out: the catalogue's ~ only matches /root and /home/<user>.
    cfg = parse_config(
        f'[[class]]\nname = "h"\nlevel = "high"\n'
        f'paths = ["{home}/*.key", "{home}/.ssh/id_*", "{tmp_path}/etcish/shadow"]\n'
    )
    plan = expand_catalogue(cfg.catalogue, homes=Homes((str(home),), ()))
    assert plan.dirs == (f"{home}/.ssh",)  # child marks never on a home itself
    assert plan.dirs_refused == 1
    # Entry watching costs nothing per open: the home (refused above) and the
    # parent of a literal file (replaced by rename) are watched too.
    assert set(plan.entry_dirs) == {str(home), f"{home}/.ssh", f"{tmp_path}/etcish"}
