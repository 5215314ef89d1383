"""The denial message catalogue: the shipped English and Chinese are complete, a
messages.toml is checked line by line, templates reach only the values offered, and
rendering never fails (English, then the broker's own sentence, as fallbacks)."""

from __future__ import annotations

import pytest

from broker.core.access import Access, Principal
from broker.core.decision import Decision, QuotaState, Verdict
from broker.core.reason import Reason
from broker.http.problem import STATUS_AND_TITLE
from broker.messages.catalogue import Catalogue, LocaleTexts
from broker.messages.language import best_locale, locale_of_pg_setting
from broker.messages.parse import DENIALS, parse_messages
from broker.messages.placeholder import KNOWN, offered
from broker.messages.shipped import shipped_catalogue
from broker.messages.template import TemplateError, compile_template

CONTACT = b'[contact]\nphone = "400-800-1234"\nemail = "help@example.com"\n'


def decision(reason: Reason, detail: str = "The broker's own sentence.", **facts: object) -> Decision:
    access = Access("t", "10.0.0.1", "GET /x", "waybill", "read", "BR002", 80)
    made = Decision("d0001", Verdict.DENY, reason, detail, access, "rev", 0.0)
    made.principal = Principal("e1001", ("courier",), ("BR001",), (), ("day-cn",))
    made.facts.update(facts)
    return made


def test_the_shipped_locales_word_every_reason_with_offered_placeholders_only() -> None:
    catalogue = shipped_catalogue()
    assert sorted(catalogue.locales) == ["en", "zh"]
    for texts in catalogue.locales.values():
        assert set(texts.entries) == set(DENIALS)
        for reason, entry in texts.entries.items():
            assert entry.message.fields <= offered(reason), reason
    for reason in DENIALS:  # the English titles are the ones /-/problems serves
        assert catalogue.locales["en"].entries[reason].title == STATUS_AND_TITLE[reason][1]
    assert all(name in KNOWN for reason in DENIALS for name in offered(reason))


def test_english_says_the_brokers_own_sentence_and_chinese_its_own_words_with_the_help_line() -> None:
    catalogue, problems = parse_messages("messages.toml", CONTACT)
    assert catalogue is not None and not problems
    refused = decision(Reason.POLICY_OTHER_BRANCH, your_branches=["BR001"])
    english = catalogue.speak(refused, "en")
    assert english.detail == (
        "The broker's own sentence. Help desk: 400-800-1234, help@example.com; quote decision d0001."
    )
    chinese = catalogue.speak(refused, "zh")
    assert chinese.locale == "zh" and chinese.title == "记录属于其他网点"
    assert "BR001" in chinese.detail and "400-800-1234" in chinese.detail and "d0001" in chinese.detail
    assert "BR002" not in chinese.detail  # the record's branch is not the employee's to learn


def test_values_a_decision_lacks_render_as_a_dash_never_an_error() -> None:
    catalogue = shipped_catalogue()  # no contact: no help line
    quota = decision(Reason.QUOTA_EXCEEDED, requested=80)
    assert "配额为 - 条" in catalogue.speak(quota, "zh").detail
    quota.quota = QuotaState("waybill", 500, 450, 3600, 1_800_000_000.0)
    assert "配额为 500 条，已用 450 条，剩余 50 条，本次请求 80 条" in catalogue.speak(quota, "zh").detail


def test_an_unknown_locale_falls_back_to_english_and_a_missing_reason_to_the_cause() -> None:
    catalogue = shipped_catalogue()
    spoken = catalogue.speak(decision(Reason.SHIFT_OUTSIDE), "xx")
    assert spoken.locale == "en" and spoken.detail == "The broker's own sentence."
    zh = catalogue.locales["zh"]  # as if a reason new in the code had no text yet (a copy: the shipped one is shared)
    entries = {reason: entry for reason, entry in zh.entries.items() if reason is not Reason.SHIFT_OUTSIDE}
    lacking = Catalogue({"zh": LocaleTexts(entries, zh.help, zh.help_without_decision)})
    spoken = lacking.speak(decision(Reason.SHIFT_OUTSIDE), "zh")
    assert spoken.detail == "The broker's own sentence." and spoken.title == ""
    assert Reason.SHIFT_OUTSIDE in catalogue.locales["zh"].entries


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("zh-Hans-CN", "zh"),
        ("fr-FR, fr;q=0.9", "en"),
        ("fr, zh;q=0.5", "zh"),
        ("en;q=0.2, zh;q=0.9", "zh"),
        ("zh;q=0, en", "en"),
        ("*", "en"),
        ("zh;q=banana, en", "en"),
        (";;;,,,", "en"),
        ("ZH-tw", "zh"),
    ],
)
def test_accept_language_is_read_by_quality_and_looked_up_by_prefix(header: str, expected: str) -> None:
    assert best_locale(header, {"en", "zh"}, "en") == expected


def test_lc_messages_names_the_locale_of_a_postgresql_session() -> None:
    assert locale_of_pg_setting("zh_CN.UTF-8", {"en", "zh"}, "en") == "zh"
    assert locale_of_pg_setting("C", {"en", "zh"}, "zh") == "zh"
    assert locale_of_pg_setting("en_US@euro", {"en", "zh"}, "zh") == "en"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{0}", "not a plain name"),
        ("{a.b}", "not a plain name"),
        ("{a[0]}", "not a plain name"),
        ("{a!r}", "may not carry a format"),
        ("{a:>9}", "may not carry a format"),
        ("{", "literal brace"),
    ],
)
def test_templates_accept_plain_names_only(text: str, why: str) -> None:
    with pytest.raises(TemplateError, match=why):
        compile_template(text)


def test_a_template_without_per_request_values_is_rendered_once() -> None:
    template = compile_template("Call {contact} {{now}}.").fill({"contact": "400"})
    assert template.constant == "Call 400 {now}."
    assert compile_template("{remaining} left").constant is None


def problems_of(text: str) -> list[str]:
    catalogue, problems = parse_messages("messages.toml", text.encode())
    assert catalogue is None
    return [str(p) for p in problems]


def test_check_names_an_unknown_reason_with_its_line_and_a_guess() -> None:
    [problem] = problems_of('default_locale = "en"\n\n[en."quota.exceded"]\nmessage = "x"\n')
    assert problem.startswith("messages.toml:3: unknown reason 'quota.exceded'")
    assert "did you mean quota.exceeded?" in problem


def test_check_names_a_placeholder_the_reason_does_not_offer() -> None:
    [problem] = problems_of('[zh."quota.exceeded"]\ntitle = "t"\nmessage = "网点 {branch} 的配额"\n')
    assert problem.startswith('messages.toml:3: zh."quota.exceeded".message: placeholder {branch} is not available')
    assert "{remaining}" in problem  # the hint lists what is


def test_check_refuses_a_locale_that_lacks_reasons() -> None:
    found = problems_of('[ja."quota.exceeded"]\ntitle = "t"\nmessage = "m"\n')
    assert any(f"locale ja lacks the title or message of {len(DENIALS) - 1} reason(s)" in p for p in found)
    assert any("locale ja has no help line" in p for p in found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('default_locale = "fr"\n', "messages.toml:1: default_locale 'fr' is not a locale here"),
        ("[en\n", "messages.toml:1: not valid TOML"),
        ('[contact]\nurl = "ftp://x"\n', "messages.toml:2: [contact] url must start with https://"),
        ('[contact]\nfax = "1"\n', "messages.toml:2: [contact] unknown key 'fax'"),
        ('[en.allow]\nmessage = "m"\n', "allow is not a denial"),
        ('[en."shift.outside"]\ntitle = "Off {shifts}"\n', "title takes no placeholders"),
        ('[en."shift.outside"]\nmesage = "m"\n', "unknown key 'mesage'"),
        ('[en]\nhelp = "Call {contact} about {resource}"\n', "placeholder {resource} is not available in help"),
        ('[EN."shift.outside"]\nmessage = "m"\n', "[EN] is not a locale name"),
        ('[en."shift.outside"]\nmessage = ""\n', "must be text"),
    ],
)
def test_check_reports_each_bad_file_with_its_line(text: str, expected: str) -> None:
    found = problems_of(text)
    assert any(expected in p for p in found), found


def test_an_override_rewords_one_reason_and_keeps_the_shipped_rest() -> None:
    text = b'default_locale = "zh"\n' + CONTACT + b'[en."quota.exceeded"]\nmessage = "Only {remaining} left."\n'
    catalogue, problems = parse_messages("messages.toml", text)
    assert catalogue is not None and not problems
    assert catalogue.default_locale == "zh" and catalogue.negotiate(None) == "zh"
    quota = decision(Reason.QUOTA_EXCEEDED)
    quota.quota = QuotaState("waybill", 500, 450, 3600, 1_800_000_000.0)
    assert catalogue.speak(quota, "en").detail.startswith("Only 50 left. Help desk: 400-800-1234")
    assert catalogue.speak(decision(Reason.SHIFT_OUTSIDE), "en").detail.startswith("The broker's own sentence.")
