"""`devices.toml`: which device certificates may carry which employees' requests.

With `[server] client_ca_file` set, the HTTP door asks every client for a certificate
signed by that authority (mutual TLS) and decides on the pair it sees: the employee the
token names and the device the certificate names. A scanner's certificate is registered
here for the employees (or the branches) who use it, so a rented password alone gets
nothing: the renter would also need the branch's device, and a device lent out still
answers only for its own branch's staff.

Devices are named by the SHA-256 fingerprint of their certificate (what `openssl x509
-noout -fingerprint -sha256` prints; colons and case do not matter), not by a name in
the certificate: a name is whatever the issuing authority was asked to write, while a
fingerprint is the one certificate. Renewing a certificate means registering the new
fingerprint, reviewed in git like the rest of the policy.

    [[device]]
    id = "scanner-br001-07"
    fingerprint = "3f:a9:...:c2"
    employees = ["e1001", "e1002"]    # these employees, wherever they work
    branches = ["BR001"]              # and every employee of these branches
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from broker.policy.problem import PolicyProblem
from broker.policy.toml_lines import array_table_lines

DEVICES_FILE = "devices.toml"
_KEYS = frozenset({"id", "fingerprint", "employees", "branches"})
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    employees: frozenset[str]
    branches: frozenset[str]
    line: int

    def carries(self, employee: str, branches: AbstractSet[str]) -> bool:
        """May requests of `employee` (who works in `branches`) come through this device?"""
        return employee in self.employees or not self.branches.isdisjoint(branches)


@dataclass(frozen=True, slots=True)
class DeviceMap:
    by_fingerprint: Mapping[str, Device] = field(default_factory=lambda: MappingProxyType({}))
    file: str = ""
    """The file it came from ("" when the policy has none: no device is registered)."""

    def get(self, fingerprint: str) -> Device | None:
        return self.by_fingerprint.get(fingerprint)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as a plain dict (a snapshot built in a child process comes back pickled;
        a mappingproxy does not pickle), read-only again once unpickled."""
        return _device_map, (dict(self.by_fingerprint), self.file)


def _device_map(by_fingerprint: dict[str, Device], file: str) -> DeviceMap:
    return DeviceMap(MappingProxyType(by_fingerprint), file)


def fingerprint_text(value: str) -> str | None:
    """A SHA-256 fingerprint in the one form the map uses (64 lower-case hex digits), from
    the forms people paste (`3F:A9:...`, `sha256:3fa9...`, with spaces); None if it is not
    one."""
    text = value.strip().lower().removeprefix("sha256:").removeprefix("sha256 fingerprint=")
    text = text.replace(":", "").replace(" ", "")
    return text if _HEX.fullmatch(text) else None


def parse_devices(name: str, raw: bytes, employees: Mapping[str, Any]) -> tuple[DeviceMap | None, list[PolicyProblem]]:
    """The device map, or every problem with its line. `employees` is the roster (ids
    to anything): a device registered for someone not on it is a typo, not a rule."""
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        line = int(m[1]) if (m := re.search(r"line (\d+)", str(exc))) else 1
        return None, [PolicyProblem(name, line, f"not valid TOML: {exc}")]
    problems = [
        PolicyProblem(name, 1, f"unknown top-level key {key!r}", "each device is a [[device]] table")
        for key in sorted(set(doc) - {"device"})
    ]
    entries = doc.get("device", [])
    if not isinstance(entries, list):
        return None, [*problems, PolicyProblem(name, 1, "device must be an array of [[device]] tables")]
    lines = array_table_lines(raw, "device")
    roster_branches = {branch for employee in employees.values() for branch in _branches_of(employee)}
    found: dict[str, Device] = {}
    ids: dict[str, int] = {}
    for number, entry in enumerate(entries):
        line = lines[number] if number < len(lines) else 1
        try:
            device, fingerprint = _device(entry, line, employees, roster_branches)
        except ValueError as exc:
            problems.append(PolicyProblem(name, line, str(exc)))
            continue
        if fingerprint in found:
            problems.append(
                PolicyProblem(name, line, f"this certificate is already registered as {found[fingerprint].id!r}")
            )
        if device.id in ids:
            problems.append(PolicyProblem(name, line, f"device id {device.id!r} is also used at line {ids[device.id]}"))
        found[fingerprint], ids[device.id] = device, line
    if problems:
        return None, problems
    return DeviceMap(MappingProxyType(found), name), []


def _device(entry: Any, line: int, employees: Mapping[str, Any], roster_branches: set[str]) -> tuple[Device, str]:
    if not isinstance(entry, dict):
        raise ValueError("a [[device]] entry must be a table")
    unknown = set(entry) - _KEYS
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}")
    device_id = entry.get("id")
    if not isinstance(device_id, str) or not device_id.strip():
        raise ValueError("id must be a non-empty string naming the device (e.g. a scanner's asset tag)")
    raw_print = entry.get("fingerprint")
    fingerprint = fingerprint_text(raw_print) if isinstance(raw_print, str) else None
    if fingerprint is None:
        raise ValueError(
            f"fingerprint of {device_id!r} must be the certificate's SHA-256 fingerprint (64 hex digits, colons "
            "allowed), as `openssl x509 -noout -fingerprint -sha256 -in device.crt` prints it"
        )
    who = _names(entry, "employees", device_id)
    where = _names(entry, "branches", device_id)
    if not who and not where:
        raise ValueError(f"device {device_id!r} names no employees and no branches: nobody could use it")
    strangers = sorted(who - set(employees))
    if strangers:
        raise ValueError(f"device {device_id!r} names employees not on the roster: {', '.join(strangers)}")
    nowhere = sorted(where - roster_branches)
    if nowhere:
        listed = ", ".join(nowhere)
        raise ValueError(f"device {device_id!r} names branches no employee on the roster works in: {listed}")
    return Device(device_id.strip(), frozenset(who), frozenset(where), line), fingerprint


def _names(entry: dict[str, Any], key: str, device_id: str) -> set[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{key} of {device_id!r} must be a list of strings")
    return {v.strip() for v in value}


def _branches_of(employee: Any) -> frozenset[str]:
    branches = getattr(employee, "roles_by_branch", None)
    return frozenset(branches) if branches is not None else frozenset()
