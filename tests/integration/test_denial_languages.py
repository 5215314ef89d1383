"""Issue #17 from the employee's side, beyond the denials themselves: the page that
explains a reason (`/-/problems/<code>`) and the PostgreSQL door's hints and own
refusals, in the language the client asked for (Accept-Language; lc_messages), with
the reason code and SQLSTATE unchanged, and `broker check` refusing a locale that
lacks any of those texts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest

from broker.core.reason import Reason
from broker.messages.said import said
from broker.messages.shipped import shipped_catalogue
from tests.conftest import BrokerFactory
from tests.harness import SECRET, Harness, door_settings

DENIALS = [reason for reason in Reason if reason is not Reason.ALLOWED]
CHINESE = re.compile(r"[\u4e00-\u9fff]")
ZH_OPTIONS = "-c lc_messages=zh_CN.UTF-8"


def zh(key: str, **values: object) -> str:
    """A shipped Chinese `pg` text, as the door should write it."""
    return shipped_catalogue().words(said(key, **values), "zh")


async def test_a_problem_page_asked_for_in_chinese_is_in_chinese_with_the_help_desk(broker: Harness) -> None:
    reply = await broker.get("/-/problems/quota.exceeded", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    body = reply.json
    assert reply.status == 200 and body["reason"] == "quota.exceeded" and body["status"] == 429
    assert reply.headers["Content-Language"] == "zh" and reply.headers["Vary"] == "Accept-Language"
    assert body["title"] == "记录配额已用完"
    assert body["explanation"] == "您已用完本时段的记录配额；配额会在拒绝信息给出的时间重置。"
    assert body["help"]["phone"] == "400-800-1234 ext. 7"
    assert body["help_text"] == "如需帮助，请联系服务台：400-800-1234 ext. 7, access-helpdesk@example.com, " \
        "https://helpdesk.example.com/access (08:00-22:00 Beijing time)。"  # fmt: skip


async def test_english_and_unknown_languages_get_the_default(broker: Harness) -> None:
    for languages in (None, "en", "fr-FR, fr;q=0.9", "zh;q=0, en", "*"):
        headers = {"Accept-Language": languages} if languages is not None else {}
        reply = await broker.get("/-/problems/shift.outside", headers=headers)
        assert reply.status == 200 and reply.headers["Content-Language"] == "en", languages
        assert reply.json["title"] == "Outside your shift"
        assert reply.json["explanation"].startswith("Records are available only during your shift")
        assert reply.json["help_text"].startswith("Help desk: 400-800-1234 ext. 7")


async def test_every_reason_has_its_own_chinese_page(broker: Harness) -> None:
    seen: set[str] = set()
    for reason in DENIALS:
        path = f"/-/problems/{reason.value}"
        chinese = await broker.get(path, headers={"Accept-Language": "zh"})
        english = await broker.get(path, headers={"Accept-Language": "en"})
        assert chinese.status == english.status == 200, reason
        assert chinese.headers["Content-Language"] == "zh", reason
        text = chinese.json["explanation"]
        assert CHINESE.search(text) and CHINESE.search(chinese.json["title"]), reason
        assert text != english.json["explanation"] and english.json["explanation"], reason
        seen.add(text)
    assert len(seen) == len(DENIALS)  # no reason borrowed another's text


async def test_an_unknown_problem_is_a_404_in_the_callers_language(broker: Harness) -> None:
    reply = await broker.get("/-/problems/no.such", headers={"Accept-Language": "zh-CN"})
    assert reply.status == 404 and reply.json["reason"] == "route.unknown"
    assert reply.headers["Content-Language"] == "zh" and CHINESE.search(reply.json["detail"])


async def test_a_page_can_be_reworded_per_locale(make_broker: BrokerFactory, policy_dir: Path) -> None:
    messages = policy_dir / "messages.toml"
    messages.write_text(
        messages.read_text() + '\n[zh."quota.exceeded"]\nexplanation = "配额每班重置；如需更多，请找主管。"\n'
    )
    broker = await make_broker()
    reply = await broker.get("/-/problems/quota.exceeded", headers={"Accept-Language": "zh"})
    assert reply.json["explanation"] == "配额每班重置；如需更多，请找主管。"
    english = await broker.get("/-/problems/quota.exceeded")
    assert english.json["explanation"].startswith("You have used your records quota")


def _check(policy_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "check", "--policies", str(policy_dir)],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "BROKER_DEV_SECRET": SECRET},
    )  # fmt: skip


def _locale_file(locale: str, *, without_explanation: str = "", without_pg: str = "") -> str:
    """A whole locale (the shipped Chinese under another name) less the texts named."""
    shipped = Path(__file__).parents[2] / "broker" / "messages" / "shipped" / "zh.toml"
    doc = tomllib.loads(shipped.read_text("utf-8"))
    lines = [f"[{locale}]", *(f"{key} = {json.dumps(doc.pop(key))}" for key in ("help", "help_without_decision"))]
    lines += [f"[{locale}.pg]", *(f"{k} = {json.dumps(v)}" for k, v in doc.pop("pg").items() if k != without_pg)]
    for code, entry in doc.items():
        lines.append(f'[{locale}."{code}"]')
        lines += [
            f"{k} = {json.dumps(v)}" for k, v in entry.items() if (code, k) != (without_explanation, "explanation")
        ]
    return "\n".join(lines) + "\n"


def test_check_accepts_a_whole_locale_and_names_the_missing_page_text(policy_dir: Path) -> None:
    messages = policy_dir / "messages.toml"
    shipped = messages.read_text()
    messages.write_text(shipped + _locale_file("zh-tw"))
    whole = _check(policy_dir)
    assert whole.returncode == 0, whole.stderr
    messages.write_text(shipped + _locale_file("zh-tw", without_explanation="bulk.over_cap"))
    result = _check(policy_dir)
    assert result.returncode == 1
    assert "locale zh-tw lacks the explanation of 1 reason(s): bulk.over_cap" in result.stderr
    assert '[zh-tw."bulk.over_cap"] explanation' in result.stderr  # the hint shows what to add


def test_check_names_a_missing_or_unknown_postgresql_text(policy_dir: Path) -> None:
    messages = policy_dir / "messages.toml"
    shipped = messages.read_text()
    messages.write_text(shipped + _locale_file("zh-tw", without_pg="hint_over_cap"))
    result = _check(policy_dir)
    assert result.returncode == 1
    assert "locale zh-tw lacks 1 PostgreSQL text(s) of [zh-tw.pg]: hint_over_cap" in result.stderr
    messages.write_text(shipped + '\n[zh.pg]\nhint_overcap = "x"\nhint_rate = "等 {seconds} 秒"\n')
    result = _check(policy_dir)
    assert result.returncode == 1
    assert "[zh.pg] unknown text 'hint_overcap' (hint: did you mean hint_over_cap?)" in result.stderr
    assert "zh.pg.hint_rate: placeholder {seconds} is not available in hint_rate" in result.stderr


@pytest.fixture
async def door(make_broker: BrokerFactory, pg_database: str) -> Harness:
    return await make_broker(postgres=door_settings(pg_database))


async def _error(door: Harness, sql: str, options: str = "") -> psycopg.errors.Diagnostic:
    dsn = door.pg_dsn("e1001", options=options) if options else door.pg_dsn("e1001")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            await conn.execute(sql)
        assert (await (await conn.execute("SELECT 1")).fetchall()) == [(1,)]  # the session goes on
    return caught.value.diag


async def test_a_statement_the_broker_will_not_run_is_hinted_in_chinese(door: Harness) -> None:
    chinese = await _error(door, "DO $$ BEGIN END $$", ZH_OPTIONS)
    assert chinese.sqlstate == "42501"
    assert chinese.message_hint == zh("plain_statements") == "请使用普通的 SELECT、INSERT、UPDATE 和 DELETE 语句"
    primary = chinese.message_primary or ""
    assert primary.startswith("本代理只执行它能检查的 SQL") and primary.endswith("[statement.refused]")
    english = await _error(door, "DO $$ BEGIN END $$")
    assert english.sqlstate == "42501"
    assert english.message_hint == "run plain SELECT, INSERT, UPDATE and DELETE statements"
    assert (english.message_primary or "").startswith("the broker does not run DO blocks")


async def test_hints_with_values_and_decisions_follow_the_locale(door: Harness) -> None:
    table = await _error(door, "SELECT * FROM no_such_table LIMIT 1", ZH_OPTIONS)
    assert table.sqlstate == "42501"
    assert (table.message_hint or "").startswith("通过本代理开放的表（模式 public）：")
    capped = await _error(door, "SELECT waybill_no FROM waybills LIMIT 500", ZH_OPTIONS)
    assert capped.sqlstate == "42501" and capped.message_hint == zh("hint_over_cap")
    pinned = await _error(door, "SET search_path TO elsewhere", ZH_OPTIONS)
    assert pinned.sqlstate == "42501" and pinned.message_hint == zh("pinned_search_path")
    english = await _error(door, "SELECT waybill_no FROM waybills LIMIT 500")
    assert english.message_hint == "Add LIMIT n with n at most your per-statement cap, and page with OFFSET."


async def test_the_servers_own_words_pass_as_written_and_the_brokers_stand_ins_are_translated(door: Harness) -> None:
    kept = await _error(door, "SELECT no_such_column FROM waybills LIMIT 1", ZH_OPTIONS)
    assert kept.sqlstate == "42703" and kept.message_primary == 'column "no_such_column" does not exist'
    replaced = await _error(door, "SELECT 1 / 0 AS x FROM waybills LIMIT 1", ZH_OPTIONS)
    assert replaced.sqlstate == "22012"
    assert (replaced.message_primary or "").startswith("某个值被拒绝（SQLSTATE 22012")
    assert replaced.message_hint == zh("check_values")
    english = await _error(door, "SELECT 1 / 0 AS x FROM waybills LIMIT 1")
    assert (english.message_primary or "").startswith("a value was refused (SQLSTATE 22012)")


async def test_a_start_up_the_broker_refuses_is_told_in_the_language_it_asked_for(door: Harness) -> None:
    for options, message, hint in (
        (f"{ZH_OPTIONS} -c work_mem=1MB", zh("startup_setting", name="work_mem"), zh("leave_out_or_set")),
        ("-c work_mem=1MB", "the setting work_mem cannot be set through the broker",
         "Leave it out of options, or SET it after connecting."),
    ):  # fmt: skip
        with pytest.raises(psycopg.OperationalError) as caught:
            await psycopg.AsyncConnection.connect(door.pg_dsn("e1001", options=options))
        assert message in str(caught.value) and hint in str(caught.value), str(caught.value)


async def test_a_spent_quota_gives_its_numbers_in_chinese_in_the_detail(door: Harness) -> None:
    dsn = door.pg_dsn("e1003", options=ZH_OPTIONS)  # trainee: cap 20, quota 60 per shift
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(3):
            assert len(await (await conn.execute("SELECT id FROM waybills LIMIT 20")).fetchall()) == 20
        with pytest.raises(psycopg.Error) as caught:
            await conn.execute("SELECT id FROM waybills LIMIT 1")
    diag = caught.value.diag
    assert diag.sqlstate == "53400" and diag.message_hint == zh("hint_quota")
    detail = diag.message_detail or ""
    assert detail.startswith("决定编号 ") and "waybill 配额：60 条中已用 60 条，剩余 0 条，" in detail, detail
