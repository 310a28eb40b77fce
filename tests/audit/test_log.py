"""The log's behaviour through its public API: durability, lookups, fail-closed, keys, retention."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from audit import (
    AuditError,
    AuditEvent,
    AuditKeyError,
    AuditLog,
    AuditRollbackError,
    AuditUnavailableError,
    LocalKek,
    generate_kek_file,
)
from audit.kek import kek_from_file

from .conftest import ConfigFactory
from .helpers import cli, event, populate

#: key.created records that a tenant's first record with a subject brings: the tenant's metadata
#: key, the subject's content key, and the system key those key.created records are sealed under
KEYS_FIRST_SUBJECT = 3


async def test_data_key_creation_is_logged(make_config: ConfigFactory) -> None:
    config = make_config(dek_max_uses=4)
    async with await AuditLog.open(config) as log:  # one session: a reopen spends reserved uses
        for i in range(3):
            await log.append(event(i, subject="alice"))
        await log.append(event(3, subject=None))  # acme's metadata key has its 4th use: no rotation
        await log.append(event(4, subject=None))  # the 5th would pass the limit: a successor key
    _, out, _ = await asyncio.to_thread(cli, config, "export", "--decrypt")
    records = [json.loads(line) for line in out.splitlines()]
    created = [r for r in records if r["type"] == "key.created"]
    starts = [r for r in records if r["type"] == "request.start"]
    assert len(starts) == 5
    # never the tenant or subject in clear, never key material
    for r in created:
        assert r["tenant"] == "" and "acme" not in json.dumps(r) and "alice" not in json.dumps(r)
    reasons = [(r["meta"]["reason"], r["meta"]["subject_h"] is not None) for r in created]
    assert sorted(reasons) == sorted(
        [("new-scope", False), ("new-scope", True), ("new-scope", False), ("use-limit", False)]
    )
    successor = next(r for r in created if r["meta"]["reason"] == "use-limit")
    first_meta_kid = starts[0]["kid"]
    assert successor["meta"]["replaces"] == first_meta_kid and starts[-1]["kid"] == successor["meta"]["kid"]
    # every key any record was sealed under was logged as created, and nothing else was
    used = {r["kid"] for r in records} | {r["ckid"] for r in records if r.get("ckid")}
    assert {c["meta"]["kid"] for c in created} == used
    code, _, _ = await asyncio.to_thread(cli, config, "verify")
    assert code == 0


async def test_appends_are_durable_dense_and_never_plaintext(make_config: ConfigFactory) -> None:
    config = make_config()
    seqs = await populate(config, 50)
    assert sorted(seqs) == list(range(50))
    blob = (
        Path(config.path).read_bytes() + Path(config.path + "-wal").read_bytes()
        if Path(config.path + "-wal").exists()
        else Path(config.path).read_bytes()
    )
    assert b"secret prompt" not in blob and b"alice" not in blob and b"acme" not in blob
    async with await AuditLog.open(config) as log:
        # and a key.created record for each data key they needed (see test_data_key_creation_is_logged)
        assert log.stats().records == 50 + KEYS_FIRST_SUBJECT
        assert await log.append(event(99)) == 50 + KEYS_FIRST_SUBJECT
        hits = await log.find(request_id="req-7", tenant="acme")
        assert [h.type for h in hits] == ["request.start"]
        assert await log.find(request_id="req-7", tenant="other") == []


async def test_checkpoints_are_signed_exported_and_verify(make_config: ConfigFactory) -> None:
    config = make_config()
    await populate(config, 12)
    size = 12 + KEYS_FIRST_SUBJECT
    latest = (Path(config.checkpoint_path) / "checkpoint").read_text()
    assert latest.split("\n")[:2] == ["bastion.local/audit", str(size)]
    assert "\n\n\u2014 bastion.local/audit " in latest
    code, out, _ = await asyncio.to_thread(cli, config, "verify", "--json", "--decrypt")
    report = json.loads(out)
    assert code == 0, report
    # metadata and content of the 12, metadata of the key.created records
    assert report["payloads"] == {"ok": 24 + KEYS_FIRST_SUBJECT, "shredded": 0, "auth_fail": 0, "missing": 0}
    assert report["logged_seq"] == size


async def test_full_queue_fails_closed(make_config: ConfigFactory) -> None:
    config = make_config(queue_max=4)
    async with await AuditLog.open(config) as log:
        # All ten tasks enqueue in one loop turn, before the writer can take anything.
        tasks = [asyncio.ensure_future(log.append(event(i))) for i in range(10)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        accepted = [r for r in results if isinstance(r, int)]
        refused = [r for r in results if isinstance(r, AuditUnavailableError)]
        assert sorted(accepted) == [0, 1, 2, 3] and len(refused) == 6
        assert log.stats().records == 4 + KEYS_FIRST_SUBJECT


async def test_second_writer_is_refused(make_config: ConfigFactory) -> None:
    config = make_config()
    async with await AuditLog.open(config):
        with pytest.raises(AuditUnavailableError):
            await AuditLog.open(config)


async def test_closed_log_refuses_appends(make_config: ConfigFactory) -> None:
    log = await AuditLog.open(make_config())
    await log.aclose()
    with pytest.raises(AuditUnavailableError):
        await log.append(event(0))


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, object()])
async def test_an_unencodable_event_is_an_audit_error_and_the_log_goes_on(
    make_config: ConfigFactory, value: object
) -> None:
    async with await AuditLog.open(make_config()) as log:
        with pytest.raises(AuditError, match="cannot be encoded"):
            await log.append(AuditEvent(type="request.start", tenant="acme", meta={"seed": value}))
        assert await log.append(event(0)) >= 0  # one bad event does not stop the writer


async def test_rollback_to_an_older_copy_is_refused_at_open(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config()
    await populate(config, 10)
    backup = tmp_path / "backup.db"
    src, dst = sqlite3.connect(config.path), sqlite3.connect(backup)
    src.backup(dst)
    src.close()
    dst.close()
    await populate(config, 10)
    for suffix in ("-wal", "-shm"):
        Path(config.path + suffix).unlink(missing_ok=True)
    shutil.copyfile(backup, config.path)  # keeps the log file and its 0600 mode
    with pytest.raises(AuditRollbackError):
        await AuditLog.open(config)


async def test_wrong_kek_is_refused(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    await populate(config, 3)
    generate_kek_file(tmp_path / "other.kek")
    with pytest.raises(AuditKeyError):
        await AuditLog.open(make_config(kek_file=str(tmp_path / "other.kek")))


async def test_kek_file_must_be_private(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    Path(config.kek_file or "").chmod(0o644)
    with pytest.raises(Exception, match="0600"):
        await AuditLog.open(config)


async def test_kek_rotation_rewraps_and_old_kek_no_longer_opens(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config()
    await populate(config, 5)
    generate_kek_file(tmp_path / "new.kek")
    code, out, err = await asyncio.to_thread(
        cli, config, "rotate-kek", "--new-kek-file", str(tmp_path / "new.kek")
    )
    assert code == 0, err
    new_config = make_config(kek_file=str(tmp_path / "new.kek"))
    with pytest.raises(AuditKeyError):
        await AuditLog.open(config)
    code, out, _ = await asyncio.to_thread(cli, new_config, "export", "--decrypt")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["content"]["prompt"] for r in records[:5]] == [
        f"secret prompt {i}" for i in range(5)
    ] or sorted(r["content"]["prompt"] for r in records[:5]) == sorted(f"secret prompt {i}" for i in range(5))
    (rotated,) = [r for r in records if r["type"] == "key.rotated"]
    assert rotated["seq"] == 5 + KEYS_FIRST_SUBJECT  # after the appends and their key.created records
    assert rotated["meta"]["new_kek_id"] == kek_from_file(tmp_path / "new.kek").kek_id


async def test_env_kek(make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    material = Path(make_config().kek_file or "").read_text().strip()
    monkeypatch.setenv("BASTION_TEST_KEK", material)
    config = make_config(kek_file=None, kek_env="BASTION_TEST_KEK")
    assert await populate(config, 2) in ([0, 1], [1, 0])
    assert isinstance(LocalKek(bytes(32)).kek_id, str)


async def test_shred_subject_then_verify(make_config: ConfigFactory) -> None:
    config = make_config()
    await populate(config, 4, subject="alice")
    await populate(config, 3, subject="bob")
    code, out, err = await asyncio.to_thread(cli, config, "shred", "--tenant", "acme", "--subject", "alice")
    assert code == 0, err
    code, out, _ = await asyncio.to_thread(cli, config, "verify", "--json", "--decrypt")
    report = json.loads(out)
    assert code == 0 and report["outcome"] == "OK", report
    assert report["payloads"]["shredded"] == 4 and report["payloads"]["auth_fail"] == 0
    code, out, _ = await asyncio.to_thread(cli, config, "export", "--decrypt", "--tenant", "acme")
    records = [json.loads(line) for line in out.splitlines()]
    by_status = {}
    for r in records:
        by_status.setdefault((r["status"]["meta"], r["status"].get("content")), []).append(r)
    assert len(by_status[("ok", "shredded")]) == 4  # metadata kept, content gone
    assert all(r["meta"]["model"] == "tiny" for r in by_status[("ok", "shredded")])
    assert len(by_status[("ok", "ok")]) == 3
    code, out, _ = await asyncio.to_thread(cli, config, "export", "--decrypt")
    assert any(json.loads(line)["type"] == "key.destroyed" for line in out.splitlines())


async def test_shred_tenant_shreds_metadata_too(make_config: ConfigFactory) -> None:
    config = make_config()
    await populate(config, 3, tenant="gone")
    await populate(config, 2, tenant="kept")
    async with await AuditLog.open(config) as log:
        await log.shred("gone")
    code, out, _ = await asyncio.to_thread(cli, config, "verify", "--json", "--decrypt")
    report = json.loads(out)
    assert code == 0 and report["payloads"]["shredded"] == 6 and report["payloads"]["ok"] >= 4


async def test_retention_expires_whole_months_with_their_keys(make_config: ConfigFactory) -> None:
    config = make_config(retention_months=2)
    times = {"old": dt.datetime(2026, 1, 15, tzinfo=dt.UTC), "new": dt.datetime(2026, 6, 15, tzinfo=dt.UTC)}
    now = {"t": times["old"]}

    def clock() -> int:
        return int(now["t"].timestamp() * 1e9)

    async with await AuditLog.open(config, clock=clock) as log:
        for i in range(3):
            await log.append(event(i))
    now["t"] = times["new"]
    async with await AuditLog.open(config, clock=clock) as log:  # retention runs at open
        await log.append(event(10))
    code, out, _ = await asyncio.to_thread(cli, config, "export", "--decrypt")
    records = [json.loads(line) for line in out.splitlines()]
    # January's records went with January's keys, the log's own key.created records included
    january = records[: 3 + KEYS_FIRST_SUBJECT]
    assert [r["status"]["meta"] for r in january] == ["shredded"] * len(january)
    expired = [r for r in records if r["type"] == "retention.expired"]
    assert len(expired) == 1 and expired[0]["meta"]["months"] == ["2026-01"]
    (june,) = [r for r in records if r["type"] == "request.start" and r["status"]["meta"] == "ok"]
    assert june["status"] == {"meta": "ok", "content": "ok"}
    assert june["content"]["prompt"] == "secret prompt 10"
    code, _, _ = await asyncio.to_thread(cli, config, "verify")
    assert code == 0


async def test_dek_rotates_after_max_uses(make_config: ConfigFactory) -> None:
    config = make_config(dek_max_uses=3)
    await populate(config, 7, subject=None)
    _code, out, _ = await asyncio.to_thread(cli, config, "export", "--decrypt")
    records = [json.loads(line) for line in out.splitlines() if json.loads(line)["type"] == "request.start"]
    kids = [r["kid"] for r in records]
    assert len(set(kids)) >= 3 and max(kids.count(k) for k in kids) <= 3
    assert all(r["status"]["meta"] == "ok" for r in records)


async def test_event_validation() -> None:
    with pytest.raises(ValueError):
        AuditEvent(type="", tenant="t")


async def test_groups_queued_behind_a_commit_keep_order_across_a_shred(make_config: ConfigFactory) -> None:
    # max_batch=3 keeps groups queued behind the one committing, so the writer seals ahead.
    config = make_config(max_batch=3)
    async with await AuditLog.open(config) as log:
        first = [asyncio.ensure_future(log.append(event(i))) for i in range(40)]
        shred = asyncio.ensure_future(log.shred("acme", "alice"))
        later = [asyncio.ensure_future(log.append(event(i, subject="bob"))) for i in range(40, 60)]
        before, after = await asyncio.gather(*first), await asyncio.gather(*later)
        destroyed = await shred
    assert max(before) < destroyed[0] < min(after)
    _, out, _ = await asyncio.to_thread(cli, config, "export")
    types = {r["seq"]: r["type"] for r in map(json.loads, out.splitlines())}
    assert sorted(types) == list(range(61 + KEYS_FIRST_SUBJECT + 1))  # dense: nothing lost
    extra = [types[s] for s in sorted(set(types) - set(before + destroyed + after))]
    assert extra == ["key.created"] * (KEYS_FIRST_SUBJECT + 1)  # bob's content key too
    code, out, err = await asyncio.to_thread(cli, config, "verify", "--json", "--decrypt")
    report = json.loads(out)
    assert code == 0, out + err
    # alice's 40 prompts are gone; every record's metadata and bob's prompts still decrypt
    ok = 40 + 1 + 40 + KEYS_FIRST_SUBJECT + 1
    assert report["payloads"] == {"ok": ok, "shredded": 40, "auth_fail": 0, "missing": 0}


async def test_a_burst_is_two_commits_and_big_groups_span_statements(make_config: ConfigFactory) -> None:
    # 3,000 appends queued in one loop turn: an idle writer commits half and seals the other half
    # while that fsync runs (one group of 3,000 without the split); each half is more rows than
    # one INSERT statement carries.
    config = make_config(checkpoint_every_records=100_000, max_batch=4096)
    async with await AuditLog.open(config) as log:
        seqs = await asyncio.gather(*(log.append(event(i)) for i in range(3000)))
        stats = log.stats()
    assert len(set(seqs)) == 3000 and max(seqs) < stats.records == 3000 + KEYS_FIRST_SUBJECT
    assert stats.commits == 2, stats
    code, out, err = await asyncio.to_thread(cli, config, "verify", "--json", "--decrypt")
    assert code == 0, out + err
    assert json.loads(out)["payloads"]["ok"] == 2 * 3000 + KEYS_FIRST_SUBJECT  # key records: metadata only


async def test_wal_stays_bounded_under_steady_appends(make_config: ConfigFactory) -> None:
    # 64 writers that always have an append outstanding never leave the writer idle, so the WAL
    # is never wholly copied by the background checkpointer alone; the writer's reset keeps it
    # small: about 2,000 frames (8 MB) plus what comes in before the reset, ~12 MB here.
    # Unbounded, these 16,000 records leave a WAL of about 80 MB.
    config = make_config(checkpoint_every_records=1000)
    async with await AuditLog.open(config) as log:

        async def writer(w: int) -> None:
            for i in range(250):
                await log.append(event(w * 1000 + i))

        await asyncio.gather(*(writer(w) for w in range(64)))
        stats = log.stats()
        wal_bytes = Path(config.path + "-wal").stat().st_size
    assert stats.wal_checkpoints > 0 and stats.wal_checkpoint_errors == 0
    assert wal_bytes < 24_000_000, wal_bytes
    code, out, err = await asyncio.to_thread(cli, config, "verify")
    assert code == 0, out + err
