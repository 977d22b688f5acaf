#!/usr/bin/env python3
"""Validates fim's OCSF JSON lines against OCSF 1.3.0, with two checks nobody here wrote the
rules of:

1. pydantic-ocsf's models (`ocsf.v1_3_0.events.FileActivity` / `DetectionFinding`
   `.model_validate`): required fields, types, enums, class_uid/type_uid consistency.
2. The OCSF 1.3.0 schema itself (the JSON that pydantic-ocsf ships, the schema repository's
   classes, objects and dictionary): every attribute the schema marks required or recommended
   for the class and for the objects fim fills must be there, every attribute must exist in
   the schema (outside `unmapped`), scalars must have their dictionary type, enum ids must be
   defined and their sibling captions must match.

A recommended attribute fim leaves out must be listed below in NOT_APPLICABLE with the reason
(docs/output.md lists the same): dropping one later fails the test. `unmapped` is free-form.

Usage: validate.py FILE... (JSON lines). Prints one line per problem, a summary naming the
validator and its version, and exits 1 when anything failed, 2 when nothing was checked.
"""

import importlib.metadata
import json
import os
import pathlib
import pwd
import sys

import ocsf
from ocsf.v1_3_0.events import DetectionFinding, FileActivity

SCHEMA = json.loads((pathlib.Path(ocsf.__file__).parent / "schemas" / "v1_3_0.json").read_text())
EVENTS = SCHEMA["events"]
OBJECTS = SCHEMA["objects"]
DICTIONARY = SCHEMA["dictionary"]["attributes"]
TYPES = SCHEMA["dictionary"]["types"]["attributes"]

# class_uid -> (pydantic model, schema class name). The Windows agent's Registry Key and
# Registry Value Activity (201001, 201002) belong to OCSF's Windows extension, which neither
# pydantic-ocsf nor its schema JSON holds: they are checked as the System Activity class they
# extend, and their own reg_* objects are not checked.
CLASSES = {
    1001: (FileActivity, "file_activity"),
    2004: (DetectionFinding, "detection_finding"),
    201001: (None, "system"),
    201002: (None, "system"),
}
WINDOWS_EXTENSION_ATTRIBUTES = {"reg_key", "prev_reg_key", "reg_value", "prev_reg_value"}

# Every class includes OCSF's includes/classification.json and includes/occurrence.json, which
# the shipped JSON leaves out: their requirements as OCSF 1.3.0 defines them.
INCLUDED = {
    "activity_id": "required",
    "category_uid": "required",
    "class_uid": "required",
    "type_uid": "required",
    "time": "required",
    "timezone_offset": "recommended",
    "activity_name": "optional",
    "category_name": "optional",
    "class_name": "optional",
    "type_name": "optional",
    "count": "optional",
    "duration": "optional",
    "end_time": "optional",
    "start_time": "optional",
}


def unknown_actor(event):
    """No process known: a scan found the change, or (Windows) the process exited before it
    could be looked up and only its pid is known."""
    process = event.get("actor", {}).get("process")
    return (event.get("unmapped", {}).get("fim", {}).get("attribution") == "unknown"
            or process is None or set(process) <= {"pid"})


def windows(event):
    return event.get("device", {}).get("os", {}).get("type_id") == 100


def outcome_unknown(event):
    """An lsm hook or an ETW record is the request; its outcome is not in the record (and
    OCSF 1.3 has no "unknown" status for these classes)."""
    return event.get("unmapped", {}).get("fim", {}).get("backend") in ("lsm", "etw")


def ext_of(obj):
    name = obj.get("name", "")
    return os.path.splitext(name)[1].lstrip(".")


def uid_has_no_name(obj):
    try:
        pwd.getpwuid(int(obj.get("uid", "-1")))
        return False
    except (KeyError, ValueError):
        return True


# (where, attribute) -> when fim may leave that recommended attribute out, and why.
NOT_APPLICABLE = {
    ("", "component"): (lambda e, o: True, "fim reports whole files, not parts of archives"),
    ("", "create_mask"): (lambda e, o: True, "a Windows create mask; Linux has none"),
    ("", "file_diff"): (lambda e, o: True, "text diffs stay in the store: `fim diff`"),
    ("", "file_result"): (lambda e, o: e.get("activity_id") != 5, "only renames have a result"),
    ("", "status"): (lambda e, o: outcome_unknown(e), "the record is the request, not its outcome"),
    ("", "status_id"): (lambda e, o: outcome_unknown(e), "the record is the request, not its outcome"),
    ("", "status_code"): (lambda e, o: True, "the kernel reports no status code to fim"),
    ("", "status_detail"): (lambda e, o: True, "the kernel reports no status detail to fim"),
    ("", "evidences"): (lambda e, o: not e["unmapped"]["fim"]["integrity"]["bad_paths"],
                        "no row named a path: a key problem or removed rows"),
    ("", "resources"): (lambda e, o: not e["unmapped"]["fim"]["integrity"]["bad_paths"],
                        "no row named a path: a key problem or removed rows"),
    ("metadata", "log_name"): (lambda e, o: True, "fim is the original producer, not a log"),
    ("metadata", "log_provider"): (lambda e, o: True, "fim is the original producer"),
    ("metadata", "original_time"): (lambda e, o: True, "`time` is the original time"),
    ("metadata", "tenant_uid"): (lambda e, o: True, "a host has no tenant"),
    ("metadata.product", "uid"): (lambda e, o: True, "fim has no product id"),
    ("device", "instance_uid"): (lambda e, o: True, "a cloud instance id is not known to fim"),
    ("device", "interface_name"): (lambda e, o: True, "a change has no network interface"),
    ("device", "interface_uid"): (lambda e, o: True, "a change has no network interface"),
    ("device", "owner"): (lambda e, o: True, "the host's owner is not known to fim"),
    ("device", "region"): (lambda e, o: True, "the host's region is not known to fim"),
    ("device", "uid"): (lambda e, o: not os.path.exists("/etc/machine-id") or windows(e),
                        "no /etc/machine-id; the Windows agent does not read the machine GUID"),
    ("actor", "process"): (lambda e, o: unknown_actor(e), "attribution unknown (a scan)"),
    ("actor", "user"): (lambda e, o: unknown_actor(e), "attribution unknown (a scan)"),
    ("actor.process", "*"): (lambda e, o: unknown_actor(e), "attribution unknown (a scan)"),
    ("actor.user", "*"): (lambda e, o: unknown_actor(e), "attribution unknown (a scan)"),
    ("actor.process", "uid"): (lambda e, o: "created_time" not in o,
                               "no start time to tell the pid's processes apart"),
    ("actor.process", "created_time"): (lambda e, o: windows(e),
                                        "the Windows agent's process lookup has no start time"),
    ("actor.process", "parent_process"): (lambda e, o: windows(e),
                                          "the Windows agent's process lookup has no parent"),
    ("actor.process", "user"): (lambda e, o: unknown_actor(e), "attribution unknown (a scan)"),
    ("actor.process.file", "hashes"): (lambda e, o: True, "fim does not hash executables"),
    ("actor.process.file", "ext"): (lambda e, o: not ext_of(o), "the name has no extension"),
    ("actor.user", "name"): (lambda e, o: uid_has_no_name(o), "/etc/passwd has no such uid"),
    ("actor.process.user", "name"): (lambda e, o: uid_has_no_name(o), "no such uid"),
    ("file", "ext"): (lambda e, o: not ext_of(o) or o.get("type_id") == 2,
                      "no extension, or a folder"),
    ("file", "hashes"): (lambda e, o: o.get("type_id") != 1 or "size" not in o
                         or e["unmapped"]["fim"].get("flags"),
                         "not a regular file, not examined (gone, truncated path), or flagged"),
    ("file_result", "ext"): (lambda e, o: not ext_of(o) or o.get("type_id") == 2,
                             "no extension, or a folder"),
    ("file_result", "hashes"): (lambda e, o: True, "the content is hashed once, on `file`"),
    ("evidences.file", "ext"): (lambda e, o: not ext_of(o), "the name has no extension"),
    ("evidences.file", "hashes"): (lambda e, o: True, "a failed row's hash cannot be trusted"),
    ("resources", "uid"): (lambda e, o: True, "a baseline row is named by its path"),
    ("resources", "owner"): (lambda e, o: True, "a baseline row has no owner"),
    ("finding_info", "analytic"): (lambda e, o: False, ""),
}

# Where the recommended attributes are checked (parent_process, for one, is only a pid).
RECOMMENDED_AT = {
    "", "metadata", "metadata.product", "device", "actor", "actor.process",
    "actor.process.file", "actor.user", "actor.process.user", "file", "file_result",
    "finding_info", "finding_info.analytic", "evidences.file", "resources",
}


def merged(spec, table):
    """Attributes of a class or object, along its `extends` chain, later definitions win."""
    chain = []
    while spec is not None:
        chain.append(spec)
        parent = spec.get("extends")
        spec = table.get(parent) if parent else None
    attributes = {}
    for spec in reversed(chain):
        for name, definition in spec.get("attributes", {}).items():
            if name == "$include":
                continue
            attributes[name] = {**attributes.get(name, {}), **definition}
    return attributes


def scalar_ok(value, type_name):
    base = TYPES.get(type_name, {}).get("type", type_name)
    if type_name in ("integer_t", "long_t", "timestamp_t", "port_t") or base in (
            "integer_t", "long_t"):
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float_t":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "boolean_t":
        return isinstance(value, bool)
    if type_name == "json_t":
        return True
    return isinstance(value, str)


class Checker:
    def __init__(self, event):
        self.event = event
        self.problems = []

    def problem(self, where, message):
        self.problems.append(f"{where or '(event)'}: {message}")

    def check(self, value, attributes, where):
        if not isinstance(value, dict):
            self.problem(where, f"an object was expected, got {value!r}")
            return
        for name, definition in attributes.items():
            requirement = definition.get("requirement")
            if name in value:
                continue
            if requirement == "required":
                self.problem(where, f"required `{name}` is missing")
            elif requirement == "recommended" and where in RECOMMENDED_AT:
                rules = [NOT_APPLICABLE.get((where, name)), NOT_APPLICABLE.get((where, "*"))]
                if not any(r is not None and r[0](self.event, value) for r in rules):
                    self.problem(where, f"recommended `{name}` is missing")
        for name, item in value.items():
            here = f"{where}.{name}" if where else name
            if where == "" and (name == "unmapped" or (
                    self.event.get("class_uid") in (201001, 201002)
                    and name in WINDOWS_EXTENSION_ATTRIBUTES)):
                continue
            definition = {**DICTIONARY.get(name, {}), **attributes.get(name, {})}
            # An object's enum adds to the dictionary's (0 Unknown and 99 Other stay valid).
            if "enum" in DICTIONARY.get(name, {}) and "enum" in attributes.get(name, {}):
                definition["enum"] = {**DICTIONARY[name]["enum"], **attributes[name]["enum"]}
            if name not in attributes:
                self.problem(here, "not an attribute of this object in OCSF 1.3.0")
                continue
            self.value(item, definition, here, value)

    def value(self, item, definition, here, parent):
        type_name = definition.get("type")
        if definition.get("is_array"):
            if not isinstance(item, list):
                self.problem(here, "an array was expected")
                return
            for element in item:
                self.one(element, definition, here, parent)
        else:
            self.one(item, definition, here, parent)

    def one(self, item, definition, here, parent):
        type_name = definition.get("type")
        if type_name in OBJECTS:
            self.check(item, merged(OBJECTS[type_name], OBJECTS), here)
            return
        if type_name and not scalar_ok(item, type_name):
            self.problem(here, f"{item!r} is not a {type_name}")
            return
        enum = definition.get("enum")
        if enum and len(set(enum) - {"0", "99"}) > 0:
            if str(item) not in enum:
                self.problem(here, f"{item!r} is not one of {sorted(enum, key=int)}")
                return
            sibling = definition.get("sibling")
            caption = enum[str(item)].get("caption")
            if sibling and sibling in parent and str(item) != "99" and caption:
                if parent[sibling] != caption:
                    self.problem(here, f"{sibling} is {parent[sibling]!r}, OCSF calls "
                                       f"{item} {caption!r}")


def validate(event):
    problems = []
    class_uid = event.get("class_uid")
    if class_uid not in CLASSES:
        return [f"class_uid {class_uid!r} is not a class fim writes"], None
    model, class_name = CLASSES[class_uid]
    if model is not None:
        try:
            model.model_validate(event)
        except Exception as error:  # pydantic's ValidationError, with every field that failed
            problems.append(f"pydantic-ocsf: {error}")
    attributes = merged(EVENTS[class_name], EVENTS)
    for name, requirement in INCLUDED.items():
        attributes[name] = {**attributes.get(name, {}), "requirement": requirement}
    checker = Checker(event)
    checker.check(event, attributes, "")
    problems.extend(f"schema: {p}" for p in checker.problems)
    if event.get("type_uid") != class_uid * 100 + event.get("activity_id", -1):
        problems.append("schema: type_uid is not class_uid * 100 + activity_id")
    return problems, class_name


def main(paths):
    version = importlib.metadata.version("pydantic-ocsf")
    checked = failed = 0
    by_class = {}
    for path in paths:
        for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            event = json.loads(line)
            problems, class_name = validate(event)
            checked += 1
            key = (class_name, event.get("activity_name"))
            by_class[key] = by_class.get(key, 0) + 1
            if problems:
                failed += 1
                print(f"{path}:{number}: {event.get('class_name')}/{event.get('activity_name')}"
                      f" {json.dumps(event.get('file', {}).get('path'))}")
                for problem in problems:
                    print("    " + problem.replace("\n", "\n    "))
    print(json.dumps({
        "validator": f"pydantic-ocsf {version} (OCSF 1.3.0 models) + the OCSF 1.3.0 schema JSON",
        "checked": checked,
        "failed": failed,
        "by_class_and_activity": {f"{c}/{a}": n for (c, a), n in sorted(by_class.items(),
                                                                        key=str)},
    }))
    if checked == 0:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
