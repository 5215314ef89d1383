"""Denial messages from the employee's side (issue #17): the language the app asks for
(Accept-Language; lc_messages at a PostgreSQL start-up), the help desk's contact in
every refusal, the reason code unchanged, English as the fallback, nothing of an
upstream's answer in any language, and a broken messages.toml refused while the last
good wording stays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.conftest import BrokerFactory
from tests.harness import SECRET, Harness, door_settings

OTHER_BRANCH = "/api/branches/BR002/waybills?limit=5"
CONTACT = {
    "phone": "400-800-1234 ext. 7",
    "email": "access-helpdesk@example.com",
    "url": "https://helpdesk.example.com/access",
    "hours": "08:00-22:00 Beijing time",
}
"""What the shipped policies/messages.toml gives."""


async def refused(broker: Harness, languages: str | None, path: str = OTHER_BRANCH, employee: str = "e1001") -> Any:
    headers = {"Accept-Language": languages} if languages is not None else {}
    return await broker.get(path, employee, headers=headers)


async def test_a_chinese_app_reads_its_refusal_in_chinese_with_the_help_desk(broker: Harness) -> None:
    reply = await refused(broker, "zh-CN,zh;q=0.9,en;q=0.8")
    body = reply.json
    assert reply.status == 403 and body["reason"] == "policy.other_branch"  # the code apps act on is unchanged
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert reply.headers["Content-Language"] == "zh" and reply.headers["Vary"] == "Accept-Language"
    assert body["title"] == "记录属于其他网点"
    assert body["detail"].startswith("您只能对本网点的 waybill 记录执行 read 操作（您的网点：BR001）。")
    assert "400-800-1234 ext. 7" in body["detail"] and body["decision_id"] in body["detail"]
    assert body["help"] == CONTACT
    assert "BR002" not in body["detail"]


async def test_english_is_the_default_and_the_fallback(broker: Harness) -> None:
    for languages in (None, "fr-FR, fr;q=0.9", "zh;q=0, en", "*"):
        reply = await refused(broker, languages)
        assert reply.headers["Content-Language"] == "en", languages
        detail = reply.json["detail"]
        assert detail.startswith("waybill records of branch BR002 are not yours to read; your branch: BR001.")
        assert detail.endswith(f"Help desk: {', '.join(list(CONTACT.values())[:3])} (08:00-22:00 Beijing time); "
                               f"quote decision {reply.json['decision_id']}.")  # fmt: skip
        assert reply.json["title"] == "Record belongs to another branch" and reply.json["help"] == CONTACT
    second_choice = await refused(broker, "fr, zh;q=0.5")
    assert second_choice.headers["Content-Language"] == "zh"


async def test_a_spent_quota_is_told_in_numbers_in_chinese(broker: Harness) -> None:
    path = "/api/branches/BR001/waybills?limit=20"
    for _ in range(3):  # the trainee's quota is 60 a shift
        assert (await broker.get(path, "e1003")).status == 200
    reply = await refused(broker, "zh", path, "e1003")
    assert reply.status == 429 and reply.json["reason"] == "quota.exceeded"
    told = "waybill 记录配额为 60 条，已用 60 条，剩余 0 条，本次请求 20 条。配额将于 2026-12-01T18:00:00+08:00 重置"
    assert told in reply.json["detail"]
    assert reply.headers["Retry-After"] and reply.headers["RateLimit"].startswith('"waybill";r=0;')


async def test_a_write_refused_after_the_service_named_the_owner_says_nothing_of_it(broker: Harness) -> None:
    [record] = (await broker.get("/api/branches/BR003/waybills?limit=1", "e2001")).json["items"]
    for languages in ("zh", "en"):
        reply = await broker.request(
            "POST", f"/api/waybills/{record['waybill_no']}/scans", "e1004",
            headers={"Accept-Language": languages}, json={"status": "sorted"},
        )  # fmt: skip
        assert reply.status == 403 and reply.json["reason"] == "policy.other_branch"
        assert "BR003" not in reply.body.decode() and record["waybill_no"] not in reply.json["detail"]
    assert "（您的网点：BR001）" in (await broker.request(
        "POST", f"/api/waybills/{record['waybill_no']}/scans", "e1004",
        headers={"Accept-Language": "zh"}, json={"status": "sorted"},
    )).json["detail"]  # fmt: skip


async def test_refusals_outside_a_decision_are_worded_too(broker: Harness) -> None:
    reply = await broker.get("/-/me", headers={"Accept-Language": "zh", "Authorization": "Bearer not.a.token"})
    assert reply.status == 401 and reply.json["reason"] == "identity.malformed"
    assert reply.json["title"] == "访问令牌格式错误" and reply.json["help"] == CONTACT
    assert reply.headers["Content-Language"] == "zh"


async def test_an_override_applies_on_reload_and_a_broken_one_keeps_the_last_good(
    make_broker: BrokerFactory, policy_dir: Path
) -> None:
    broker = await make_broker()
    messages = policy_dir / "messages.toml"
    shipped = messages.read_text()
    messages.write_text(shipped + '\n[en."policy.other_branch"]\nmessage = "Not yours: {resource}, {your_branches}."\n')
    assert await broker.broker.reload("test")
    assert (await refused(broker, "en")).json["detail"].startswith("Not yours: waybill, BR001. Help desk:")
    messages.write_text(shipped + '\n[en."policy.other_branch"]\nmessage = "Not yours: {branch}."\n')
    assert not await broker.broker.reload("test")
    assert (await refused(broker, "en")).json["detail"].startswith("Not yours: waybill, BR001.")
    state = (await broker.get("/-/policy")).json
    [problem] = state["last_rejected"]["problems"]
    assert problem.startswith("messages.toml:") and "placeholder {branch} is not available" in problem


def test_check_refuses_a_bad_messages_file_naming_the_line(policy_dir: Path) -> None:
    (policy_dir / "messages.toml").write_text('[zh."quota.exceded"]\nmessage = "x"\n\n[ja."shift.outside"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "broker", "check", "--policies", str(policy_dir)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "BROKER_DEV_SECRET": SECRET},
    )  # fmt: skip
    assert result.returncode == 1
    assert "messages.toml:1: unknown reason 'quota.exceded' in [zh] (hint: did you mean quota.exceeded?)" in (
        result.stderr
    )
    assert "messages.toml:4: locale ja lacks the title or message of" in result.stderr
    assert "the policy would be refused" in result.stderr


@pytest.fixture
async def pg_zh(make_broker: BrokerFactory, pg_database: str) -> Harness:
    return await make_broker(postgres=door_settings(pg_database))


async def test_a_postgresql_session_that_asks_for_chinese_is_refused_in_chinese(pg_zh: Harness) -> None:
    dsn = pg_zh.pg_dsn("e1001", options="-c lc_messages=zh_CN.UTF-8")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            await conn.execute("SELECT waybill_no FROM waybills LIMIT 500")
        diag = caught.value.diag
        assert diag.sqlstate == "42501"
        assert diag.message_primary is not None
        assert diag.message_primary.startswith("您请求了 500 条 waybill 记录；每次请求最多 50 条。")
        assert "400-800-1234 ext. 7" in diag.message_primary and diag.message_primary.endswith("[bulk.over_cap]")
        assert (await (await conn.execute("SELECT 1")).fetchall()) == [(1,)]
    async with await psycopg.AsyncConnection.connect(pg_zh.pg_dsn("e1001"), autocommit=True) as english:
        with pytest.raises(psycopg.Error) as caught:
            await english.execute("SELECT waybill_no FROM waybills LIMIT 500")
        assert (caught.value.diag.message_primary or "").startswith("You asked for 500 records")


async def test_a_refused_postgresql_login_speaks_the_language_asked_at_start_up(pg_zh: Harness) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError) as caught:
        await asyncpg.connect(
            host="127.0.0.1", port=pg_zh.pg_port, user="e1002", password=pg_zh.token("e1002"),
            database=pg_zh.broker.settings.postgres.server_database, ssl=False,
            server_settings={"lc_messages": "zh_CN"},
        )  # fmt: skip
    assert caught.value.sqlstate == "28000"
    assert "记录只能在您的班次（night-cn）内访问。您的下一个班次开始于 2026-12-01T22:00:00+08:00。" in str(caught.value)
