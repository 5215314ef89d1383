"""Deterministic fake logistics data for the demo upstream and for tests.

Everything comes from `random.Random(seed)` and hand-rolled word lists, so the same seed gives
identical data on every run without a faker dependency. Generation is column-wise
(`rng.choices(..., k=count)` over precomputed string pools) because per-record `rng.choice`
calls and string formatting made the default 36,000 waybills several times slower to build,
and the demo upstream builds them on every start (tests, benchmarks).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Final, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Branch:
    """A depot of the sample carrier; waybills and customers belong to exactly one."""

    code: str
    city: str
    time_zone: str


_CHINA: Final = "Asia/Shanghai"

BRANCHES: Final[tuple[Branch, ...]] = (
    Branch("BR001", "Shanghai", _CHINA),
    Branch("BR002", "Beijing", _CHINA),
    Branch("BR003", "Shenzhen", _CHINA),
    Branch("BR004", "Guangzhou", _CHINA),
    Branch("BR005", "Chengdu", _CHINA),
    Branch("BR006", "Hangzhou", _CHINA),
    Branch("BR007", "Wuhan", _CHINA),
    Branch("BR008", "Xi'an", _CHINA),
    Branch("BR009", "Nanjing", _CHINA),
    Branch("BR010", "Tianjin", _CHINA),
    Branch("BR011", "Chongqing", _CHINA),
    Branch("BR012", "Urumqi", "Asia/Urumqi"),
)

STATUSES: Final[tuple[str, ...]] = (
    "created",
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "delivered",
)
"""Waybill lifecycle, in order. Most stored waybills are finished, as in a real carrier."""

TIERS: Final[tuple[str, ...]] = ("standard", "silver", "gold", "platinum")

SERVICES: Final[tuple[str, ...]] = ("standard", "express", "same_day", "economy")

WAYBILL_PREFIX: Final = "SF"
WAYBILL_SERIAL_LOW: Final = 1_000_000_000
WAYBILL_SERIAL_HIGH: Final = 9_000_000_000
"""Generated serials stay below this, so callers can mint new ones above it without clashes."""

_YEAR_START: Final = 1_767_225_600  # 2026-01-01T00:00:00Z
_DAYS_IN_YEAR: Final = 365  # 2026 is not a leap year
_MINUTES_PER_DAY: Final = 1440

_SURNAMES: Final = (
    "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou",
    "Xu", "Sun", "Ma", "Zhu", "Hu", "Guo", "He", "Gao", "Lin", "Luo",
    "Zheng", "Liang", "Xie", "Song", "Tang", "Han", "Feng", "Deng", "Cao", "Peng",
    "Zeng", "Xiao", "Tian", "Dong", "Yuan", "Pan", "Yu", "Jiang", "Cai", "Du",
)  # fmt: skip

_GIVEN_NAMES: Final = (
    "Wei", "Fang", "Na", "Xiuying", "Min", "Jing", "Li", "Qiang", "Lei", "Jun",
    "Yang", "Yong", "Yan", "Jie", "Juan", "Tao", "Ming", "Chao", "Xiulan", "Xia",
    "Ping", "Gang", "Hui", "Haoran", "Yuxuan", "Zihan", "Yutong", "Xinyi", "Jiahao", "Junjie",
    "Shuang", "Lan", "Bo", "Peng", "Hao", "Kai", "Xin", "Yi", "Rui", "Ning",
)  # fmt: skip

_STREETS: Final = (
    "Zhongshan Road", "Renmin Road", "Jiefang Avenue", "Heping Street", "Jianshe Road",
    "Xinhua Road", "Changjiang Road", "Huaihai Middle Road", "Nanjing West Road",
    "Dongfeng Road", "Youyi Road", "Wenhua Road", "Gongye Avenue", "Xingfu Street",
    "Chaoyang Road", "Yanan East Road", "Beijing Road", "Qingnian Road", "Binhe Avenue",
    "Keji Road", "Shiji Avenue", "Minzhu Road", "Guangming Street", "Huayuan Road",
    "Jinxiu Road", "Xueyuan Road", "Tiyu Road", "Fuxing Road", "Hongqi Road", "Zhenxing Road",
)  # fmt: skip

_DISTRICTS: Final[dict[str, tuple[str, ...]]] = {
    "Shanghai": ("Huangpu", "Xuhui", "Jing'an", "Pudong New Area", "Minhang"),
    "Beijing": ("Chaoyang", "Haidian", "Dongcheng", "Xicheng", "Fengtai"),
    "Shenzhen": ("Futian", "Nanshan", "Luohu", "Bao'an", "Longgang"),
    "Guangzhou": ("Tianhe", "Yuexiu", "Haizhu", "Baiyun", "Panyu"),
    "Chengdu": ("Jinjiang", "Wuhou", "Qingyang", "Chenghua", "Jinniu"),
    "Hangzhou": ("Xihu", "Shangcheng", "Gongshu", "Binjiang", "Yuhang"),
    "Wuhan": ("Jiang'an", "Wuchang", "Hongshan", "Jianghan", "Hanyang"),
    "Xi'an": ("Yanta", "Beilin", "Lianhu", "Xincheng", "Weiyang"),
    "Nanjing": ("Xuanwu", "Gulou", "Qinhuai", "Jianye", "Jiangning"),
    "Tianjin": ("Heping", "Hexi", "Nankai", "Hedong", "Binhai New Area"),
    "Chongqing": ("Yuzhong", "Jiangbei", "Nan'an", "Shapingba", "Yubei"),
    "Urumqi": ("Tianshan", "Saybag", "Xinshi", "Shuimogou", "Midong"),
}

_GOODS: Final = (
    "cotton T-shirts", "smartphone, boxed", "phone cases", "USB-C charging cables",
    "ceramic tea set", "green tea, 250 g tins", "running shoes", "children's books",
    "bluetooth earbuds", "stainless steel thermos", "silk scarves", "kitchen knives",
    "laptop sleeve", "printer toner cartridges", "vitamin supplements", "skin care set",
    "LED desk lamp", "board games", "office paper, A4 reams", "spare auto parts",
    "dried mushrooms", "rice cooker", "yoga mat", "wool sweater", "camera lens",
)  # fmt: skip

_POSTCODE_BASE: Final[dict[str, int]] = {
    "Shanghai": 200_000, "Beijing": 100_000, "Shenzhen": 518_000, "Guangzhou": 510_000,
    "Chengdu": 610_000, "Hangzhou": 310_000, "Wuhan": 430_000, "Xi'an": 710_000,
    "Nanjing": 210_000, "Tianjin": 300_000, "Chongqing": 400_000, "Urumqi": 830_000,
}  # fmt: skip
"""City postcodes; each district gets base + 10 * (its index + 1). Plausible, not official."""

_MOBILE_PREFIXES: Final = tuple(f"1{second}{third}" for second in "3456789" for third in "0123456789")
_DIGIT_TABLE: Final = bytes(ord("0") + byte % 10 for byte in range(256))
_NAMES: Final = tuple(f"{s} {g}" for s in _SURNAMES for g in _GIVEN_NAMES)
_ITEMS: Final = tuple(
    f"{q1} x {a}; {q2} x {b}" for i, a in enumerate(_GOODS) for b in _GOODS[i + 1 :] for q1, q2 in ((1, 2), (3, 1))
)
_HOUSE_NUMBERS: Final = tuple(f"No. {number}" for number in range(1, 1000))
_DECLARED_VALUES_CNY: Final = tuple(range(0, 5001, 10))
_PIECES: Final = (1, 1, 1, 2, 2, 3, 4)


def _pool(weighted: Iterable[tuple[_T, int]]) -> tuple[_T, ...]:
    """Each value repeated `weight` times.

    A uniform `rng.choices` over this is about twice as fast as `choices(weights=...)`,
    which bisects per draw.
    """
    return tuple(value for value, weight in weighted for _ in range(weight))


_STATUS_POOL: Final = _pool(zip(STATUSES, (4, 6, 15, 5, 70), strict=True))
_SERVICE_POOL: Final = _pool(zip(SERVICES, (55, 30, 5, 10), strict=True))
_TIER_POOL: Final = _pool(zip(TIERS, (70, 18, 9, 3), strict=True))
_PAYMENT_POOL: Final = _pool(zip(("sender_pays", "recipient_pays", "monthly_account"), (12, 3, 5), strict=True))
_CHANNEL_POOL: Final = _pool(
    zip(
        ("mobile_app", "wechat_mini_program", "branch_counter", "merchant_api"),
        (9, 6, 3, 2),
        strict=True,
    )
)
_WEIGHT_POOL: Final = _pool((round(tenths / 10, 1), max(1, round(40 / tenths**0.6))) for tenths in range(1, 301))
"""Parcel weights in kg, 0.1 to 30.0; they skew light, probability falling off with mass."""

_DAYS: Final = tuple(
    time.strftime("%Y-%m-%dT", time.gmtime(_YEAR_START + 86_400 * day)) for day in range(_DAYS_IN_YEAR)
)
_HOUR_MINUTES: Final = tuple(f"{hour:02d}:{minute:02d}:" for hour in range(24) for minute in range(60))
_SECONDS: Final = tuple(f"{second:02d}Z" for second in range(60))


def _address_tails(city: str) -> tuple[str, ...]:
    """Every " street, district, city postcode" an address in `city` can end with."""
    base = _POSTCODE_BASE[city]
    return tuple(
        f" {street}, {district}, {city} {base + 10 * (index + 1)}"
        for index, district in enumerate(_DISTRICTS[city])
        for street in _STREETS
    )


_CITY_TAILS: Final = {branch.city: _address_tails(branch.city) for branch in BRANCHES}
_TAILS_PER_CITY: Final = len(_DISTRICTS["Shanghai"]) * len(_STREETS)
assert all(len(tails) == _TAILS_PER_CITY for tails in _CITY_TAILS.values())
_ALL_TAILS: Final = tuple(tail for tails in _CITY_TAILS.values() for tail in tails)


def _phones(rng: random.Random, count: int) -> list[str]:
    """Mainland mobile numbers: 1[3-9] then nine digits.

    The last eight digits come from one `randbytes` call mapped onto ASCII digits, which
    is an order of magnitude cheaper than formatting a random integer per number.
    """
    prefixes = rng.choices(_MOBILE_PREFIXES, k=count)
    digits = rng.randbytes(8 * count).translate(_DIGIT_TABLE).decode("ascii")
    return [prefix + digits[start : start + 8] for prefix, start in zip(prefixes, range(0, 8 * count, 8), strict=True)]


def _addresses(rng: random.Random, cities: Sequence[str] | None, count: int) -> list[str]:
    """Street addresses, in the given per-record cities or anywhere when `cities` is None."""
    numbers = rng.choices(_HOUSE_NUMBERS, k=count)
    if cities is None:
        tails = rng.choices(_ALL_TAILS, k=count)
    else:
        picks = rng.choices(range(_TAILS_PER_CITY), k=count)
        tails = [_CITY_TAILS[city][pick] for city, pick in zip(cities, picks, strict=True)]
    return [number + tail for number, tail in zip(numbers, tails, strict=True)]


def _party(rng: random.Random, cities: Sequence[str] | None, count: int) -> list[dict[str, str]]:
    """Sender or recipient objects: name, phone, address."""
    names = rng.choices(_NAMES, k=count)
    phones = _phones(rng, count)
    addresses = _addresses(rng, cities, count)
    return [
        {"name": name, "phone": phone, "address": address}
        for name, phone, address in zip(names, phones, addresses, strict=True)
    ]


def _timestamps(rng: random.Random, count: int) -> list[str]:
    """Sorted ISO-8601 UTC instants within 2026, so listings read oldest first.

    Assembled from precomputed day / hour-minute / second fragments: `time.strftime` per
    record was the single largest cost of generating a full data set.
    """
    minutes = sorted(rng.choices(range(_DAYS_IN_YEAR * _MINUTES_PER_DAY), k=count))
    seconds = rng.choices(_SECONDS, k=count)
    return [
        _DAYS[minute // _MINUTES_PER_DAY] + _HOUR_MINUTES[minute % _MINUTES_PER_DAY] + second
        for minute, second in zip(minutes, seconds, strict=True)
    ]


def _waybill_numbers(rng: random.Random, count: int) -> list[str]:
    """Unique, increasing waybill numbers, as a carrier issues them over the year.

    Random gaps keep the numbers unguessable-looking; the cap on the gap keeps any `count`
    inside [WAYBILL_SERIAL_LOW, WAYBILL_SERIAL_HIGH).
    """
    max_gap = max(1, min(200_000, (WAYBILL_SERIAL_HIGH - WAYBILL_SERIAL_LOW) // max(count, 1)))
    gaps = rng.choices(range(1, max_gap + 1), k=count)
    serials = accumulate(gaps, initial=WAYBILL_SERIAL_LOW)
    next(serials)
    return [WAYBILL_PREFIX + str(serial) for serial in serials]


def generate_waybills(count: int = 36_000, seed: int = 7) -> list[dict[str, object]]:
    """`count` waybills spread evenly over BRANCHES, oldest first, unique `waybill_no`.

    The sender is in the branch's city (that is where the parcel was picked up); the
    recipient can be anywhere in the network. Records depend on `count` as well as `seed`
    (each field is drawn as a whole column), so a smaller count is not a prefix of a larger.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(seed)
    numbers = _waybill_numbers(rng, count)
    branches = rng.choices(BRANCHES, k=count)
    columns = zip(
        numbers,
        branches,
        rng.choices(_STATUS_POOL, k=count),
        rng.choices(_SERVICE_POOL, k=count),
        _timestamps(rng, count),
        rng.choices(_WEIGHT_POOL, k=count),
        rng.choices(_PIECES, k=count),
        _party(rng, [branch.city for branch in branches], count),
        _party(rng, None, count),
        rng.choices(_ITEMS, k=count),
        rng.choices(_DECLARED_VALUES_CNY, k=count),
        rng.choices(_PAYMENT_POOL, k=count),
        rng.choices(_CHANNEL_POOL, k=count),
        strict=True,
    )
    return [
        {
            "waybill_no": number,
            "branch_code": branch.code,
            "status": status,
            "service": service,
            "created_at": created_at,
            "weight_kg": weight,
            "pieces": pieces,
            "sender": sender,
            "recipient": recipient,
            "items": items,
            "declared_value_cny": declared,
            "payment": payment,
            "channel": channel,
        }
        for (
            number,
            branch,
            status,
            service,
            created_at,
            weight,
            pieces,
            sender,
            recipient,
            items,
            declared,
            payment,
            channel,
        ) in columns
    ]


def generate_customers(count: int = 6000, seed: int = 11) -> list[dict[str, object]]:
    """`count` account customers, ids CU000001 upwards, each homed at one branch's city."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(seed)
    branches = rng.choices(BRANCHES, k=count)
    columns = zip(
        range(1, count + 1),
        branches,
        rng.choices(_NAMES, k=count),
        _phones(rng, count),
        _addresses(rng, [branch.city for branch in branches], count),
        rng.choices(_TIER_POOL, k=count),
        strict=True,
    )
    return [
        {
            "customer_id": f"CU{number:06d}",
            "branch_code": branch.code,
            "name": name,
            "phone": phone,
            "address": address,
            "tier": tier,
        }
        for number, branch, name, phone, address, tier in columns
    ]
