"""infra/ against Azure's definitions of its resource types, and run as azd runs it.

The definitions in ../shared/reference/azure-types (its README says where they come
from) are the data the Bicep CLI type-checks resource bodies with. Every `resource` in
infra/, child resources and `existing` references included, must name a
type@api-version they define, set only properties they define and that are not
read-only, give the required ones, and give an enum property one of the values they
list: what `bicep build` would flag, without the Bicep CLI. Enums the definitions leave
open are held to their listed values too, since a value Azure does not know fails only
once the deployment runs.

The second half evaluates the templates with what azd passes them (main.parameters.json
filled from an azd environment) for the facts a first `azd up` depends on.

The Bicep is read by a small reader of its own, with Bicep's operator precedence
(pycep, which test_deploy uses to lint, nests every operator to the right and knows
only the built-in functions); it fails on syntax it does not know.
"""

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.deploy

Node = dict[str, Any]
Outline = dict[str, Any]


def repository_root() -> Path:
    here = Path(__file__).resolve()
    for folder in here.parents:
        if (folder / "pyproject.toml").is_file() and (folder / "infra").is_dir():
            return folder
    raise RuntimeError(f"no repository root above {here}")


ROOT = repository_root()
INFRA = ROOT / "infra"
AZURE_TYPES = ROOT.parent / "shared" / "reference" / "azure-types"

REQUIRED, READ_ONLY = 1, 2
# Keys of a resource body that Bicep itself defines, not the resource type.
BICEP_KEYS = {"parent", "scope", "dependsOn"}
EXISTING_KEYS = {"name", "parent", "scope"}


# --- Reading Bicep --------------------------------------------------------------------


class BicepSyntaxError(Exception):
    pass


TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+|//[^\n]*|/\*.*?\*/)
    |(?P<newline>\n)
    |(?P<multiline>'''.*?''')
    |(?P<string>')
    |(?P<int>\d+)
    |(?P<name>[A-Za-z_]\w*)
    |(?P<op>\.\?|\[\?|::|=>|&&|\|\||\?\?|==|!=|=~|!~|<=|>=|[-+*/%!<>?:.,()\[\]{}=@|])
    """,
    re.VERBOSE | re.DOTALL,
)
# Binding strength of the binary operators; `?:` binds least of all.
BINARY = {"??": 1, "||": 2, "&&": 3, "==": 4, "!=": 4, "=~": 4, "!~": 4}
BINARY |= {"<": 5, "<=": 5, ">": 5, ">=": 5, "+": 6, "-": 6, "*": 7, "/": 7, "%": 7}
ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    line: int


def string_end(text: str, start: int) -> int:
    """The index after the string literal that opens at `start`."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == "'":
            return i + 1
        elif text.startswith("${", i):
            i = interpolation_end(text, i)
        else:
            i += 1
    raise BicepSyntaxError(f"a string that never ends: {text[start : start + 40]!r}")


def interpolation_end(text: str, start: int) -> int:
    """The index after the `${...}` that opens at `start`; strings inside may hold
    braces and interpolations of their own."""
    i, depth = start + 2, 1
    while depth:
        if i >= len(text):
            raise BicepSyntaxError(f"a ${{ that never ends: {text[start:][:40]!r}")
        if text[i] == "'":
            i = string_end(text, i)
            continue
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return i


def tokens(text: str, first_line: int = 1) -> list[Token]:
    found, i, line = [], 0, first_line
    while i < len(text):
        match = TOKEN.match(text, i)
        if match is None:
            raise BicepSyntaxError(f"line {line}: cannot read {text[i : i + 20]!r}")
        kind, end = match.lastgroup or "", match.end()
        if kind == "string":
            end = string_end(text, i)
        if kind != "space":
            found.append(Token(kind, text[i:end], line))
        line += text.count("\n", i, end)
        i = end
    return [*found, Token("end", "", line)]


class BicepReader:
    """Reads the Bicep that infra/ is written in into plain data: params, vars,
    outputs, modules and resources, every value an expression tree of dicts:
    {"str"} (with its "line"), {"interp": parts}, {"int"}, {"bool"}, {"null"},
    {"ref": name}, {"local": loop variable}, {"array"}, {"object": [[key, line,
    value], ...], "resources": [child, ...]}, {"loop": body}, {"if", "then"},
    {"op": operator, "args"} and {"call": function, "args"}. Syntax it does not know
    is an error, never skipped."""

    def __init__(self, text: str, path: str, first_line: int = 1) -> None:
        self.path = path
        self.tokens = tokens(text, first_line)
        self.index = 0
        self.newlines_separate = [True]
        self.bound: frozenset[str] = frozenset()

    def error(self, expected: str) -> BicepSyntaxError:
        token = self.peek()
        found = token.text or "the end"
        return BicepSyntaxError(f"{self.path}:{token.line}: {expected}, not {found!r}")

    def position(self, ahead: int = 0) -> int:
        """Where the next token (or the one `ahead` after it) is; inside parentheses
        and brackets of an index, newlines are only spacing."""
        i = self.index
        while True:
            if self.tokens[i].kind == "newline" and not self.newlines_separate[-1]:
                i += 1
            elif ahead:
                ahead, i = ahead - 1, i + 1
            else:
                return i

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[self.position(ahead)]

    def next(self) -> Token:
        i = self.position()
        self.index = i + 1
        return self.tokens[i]

    def at(self, *texts: str) -> bool:
        token = self.peek()
        return token.kind in ("op", "name") and token.text in texts

    def expect(self, text: str) -> Token:
        if not self.at(text):
            raise self.error(f"expected {text!r}")
        return self.next()

    def name(self) -> Token:
        if self.peek().kind != "name":
            raise self.error("expected a name")
        return self.next()

    def skip_separators(self, commas: bool = False) -> None:
        while self.tokens[self.index].kind == "newline" or (
            commas and self.tokens[self.index].text == ","
        ):
            self.index += 1

    def nested(self, separate: bool, read: Callable[[], Any]) -> Any:
        self.newlines_separate.append(separate)
        try:
            return read()
        finally:
            self.newlines_separate.pop()

    # Declarations

    def file(self) -> Outline:
        outline: Outline = {
            "params": {},
            "vars": {},
            "outputs": {},
            "modules": {},
            "resources": [],
        }
        decorators: dict[str, list[Node]] = {}
        while True:
            self.skip_separators()
            if self.peek().kind == "end":
                return outline
            if self.at("@"):
                self.next()
                decorator = self.name().text
                if decorator == "sys" and self.at("."):
                    self.next()
                    decorator = self.name().text
                decorators[decorator] = self.arguments()
                continue
            keyword = self.name()
            if keyword.text in ("targetScope", "metadata"):
                if keyword.text == "metadata":
                    self.name()
                self.expect("=")
                self.expression()
            elif keyword.text == "param":
                name = self.name()
                kind = self.type_name()
                default = None
                if self.at("="):
                    self.next()
                    default = self.expression()
                allowed = decorators.get("allowed")
                outline["params"][name.text] = {
                    "type": kind,
                    "default": default,
                    "allowed": allowed[0]["array"] if allowed else None,
                    "line": name.line,
                }
            elif keyword.text == "var":
                name = self.name()
                self.expect("=")
                outline["vars"][name.text] = self.expression()
            elif keyword.text == "output":
                name = self.name()
                self.type_name()
                self.expect("=")
                outline["outputs"][name.text] = self.expression()
            elif keyword.text == "module":
                record = self.declaration(self.name(), existing_allowed=False)
                record["path"] = record.pop("type")
                outline["modules"][record["symbol"]] = record
            elif keyword.text == "resource":
                outline["resources"].append(self.declaration(self.name()))
            else:
                raise BicepSyntaxError(
                    f"{self.path}:{keyword.line}: {keyword.text!r} is not read here"
                )
            decorators = {}
            if self.peek().kind not in ("newline", "end"):
                raise self.error("expected the end of the line")

    def type_name(self) -> str:
        words = []
        while not self.at("=") and self.peek().kind not in ("newline", "end"):
            words.append(self.next().text)
        if not words:
            raise self.error("expected a type")
        return "".join(words)

    def declaration(self, symbol: Token, existing_allowed: bool = True) -> Node:
        kind = self.primary()
        if "str" not in kind:
            raise BicepSyntaxError(f"{self.path}:{symbol.line}: expected a type string")
        existing = existing_allowed and self.at("existing")
        if existing:
            self.next()
        self.expect("=")
        body, condition, loop = self.body(), None, False
        if "if" in body:
            condition, body = body["if"], body["then"]
        if "loop" in body:
            loop, body = True, body["loop"]
            if "if" in body:
                condition, body = body["if"], body["then"]
        if "object" not in body:
            raise BicepSyntaxError(f"{self.path}:{symbol.line}: expected an object")
        return {
            "symbol": symbol.text,
            "type": kind["str"],
            "existing": existing,
            "line": symbol.line,
            "condition": condition,
            "loop": loop,
            "body": body,
        }

    def body(self) -> Node:
        if not self.at("if"):
            return self.expression()
        self.next()
        condition = self.parenthesised()
        return {"if": condition, "then": self.body()}

    # Expressions

    def expression(self, floor: int = 0) -> Node:
        left = self.unary()
        while True:
            token = self.peek()
            if token.kind != "op":
                return left
            if token.text == "?" and floor == 0:
                self.next()
                yes = self.expression()
                self.expect(":")
                left = {"op": "?:", "args": [left, yes, self.expression()]}
                continue
            strength = BINARY.get(token.text, 0)
            if strength <= floor:
                return left
            self.next()
            right = self.expression(strength)
            left = {"op": token.text, "args": [left, right]}

    def unary(self) -> Node:
        if self.at("!", "-"):
            operator = "!" if self.next().text == "!" else "neg"
            return {"op": operator, "args": [self.unary()]}
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while True:
            token = self.peek()
            if token.kind != "op":
                return node
            if token.text in (".", ".?"):
                self.next()
                member = self.name().text
                if self.at("("):
                    node = {"call": member, "target": node, "args": self.arguments()}
                elif node.get("op") == "property":
                    node = {"op": "property", "args": [*node["args"], member]}
                else:
                    node = {"op": "property", "args": [node, member]}
            elif token.text in ("[", "[?"):
                self.next()
                index = self.nested(False, self.expression)
                self.expect("]")
                node = {"op": "index", "args": [node, index]}
            elif token.text == "::":
                self.next()
                node = {"op": "::", "args": [node, self.name().text]}
            elif token.text == "!":
                self.next()  # `x!`: asserts x is not null
            else:
                return node

    def primary(self) -> Node:
        token = self.next()
        if token.kind == "string":
            return self.string(token)
        if token.kind == "multiline":
            return {"str": token.text[3:-3], "line": token.line}
        if token.kind == "int":
            return {"int": int(token.text)}
        if token.kind == "name":
            if token.text in ("true", "false"):
                return {"bool": token.text == "true"}
            if token.text == "null":
                return {"null": True}
            function = token.text
            if function in ("az", "sys") and self.at(".") and self.peek(2).text == "(":
                self.next()
                function = self.name().text
            if self.at("("):
                return {"call": function, "args": self.arguments()}
            if token.text in self.bound:
                return {"local": token.text}
            return {"ref": token.text}
        if token.text == "(":
            self.index -= 1
            return self.parenthesised()
        if token.text in ("[", "[?"):
            return self.nested(True, self.array)
        if token.text == "{":
            return self.nested(True, self.object)
        self.index -= 1
        raise self.error("expected a value")

    def parenthesised(self) -> Node:
        self.expect("(")
        node = self.nested(False, self.expression)
        self.expect(")")
        return node

    def arguments(self) -> list[Node]:
        def read() -> list[Node]:
            found = []
            while not self.at(")"):
                found.append(self.expression())
                if not self.at(")"):
                    self.expect(",")
            self.next()
            return found

        self.expect("(")
        return self.nested(False, read)

    def array(self) -> Node:
        self.skip_separators()
        if self.at("for"):
            return self.loop()
        found = []
        while True:
            self.skip_separators(commas=True)
            if self.at("]"):
                self.next()
                return {"array": found}
            found.append(self.expression())

    def loop(self) -> Node:
        self.expect("for")
        if self.at("("):
            self.next()
            names = [self.name().text]
            while self.at(","):
                self.next()
                names.append(self.name().text)
            self.expect(")")
        else:
            names = [self.name().text]
        self.expect("in")
        self.expression()
        self.expect(":")
        outer, self.bound = self.bound, self.bound | set(names)
        try:
            body = self.body()
        finally:
            self.bound = outer
        self.skip_separators()
        self.expect("]")
        return {"loop": body}

    def object(self) -> Node:
        pairs_found: list[list[Any]] = []
        children: list[Node] = []
        while True:
            self.skip_separators(commas=True)
            if self.at("}"):
                self.next()
                return {"object": pairs_found, "resources": children}
            key = self.next()
            if key.text == "resource" and self.peek().kind == "name":
                children.append(self.declaration(self.name()))
                continue
            if key.kind == "string":
                literal = self.string(key)
                name = literal.get("str", key.text[1:-1])
            elif key.kind == "name":
                name = key.text
            else:
                self.index -= 1
                raise self.error("expected a property name")
            self.expect(":")
            pairs_found.append([name, key.line, self.expression()])

    def string(self, token: Token) -> Node:
        body, parts, literal, i = token.text[1:-1], [], "", 0
        while i < len(body):
            if body[i] == "\\":
                literal += ESCAPES.get(body[i + 1], body[i + 1])
                i += 2
            elif body.startswith("${", i):
                j = interpolation_end(body, i)
                reader = BicepReader(body[i + 2 : j - 1], self.path, token.line)
                reader.bound = self.bound
                parts += [literal, reader.nested(False, reader.expression)]
                literal, i = "", j
            else:
                literal += body[i]
                i += 1
        parts.append(literal)
        parts = [part for part in parts if part != ""]
        if all(isinstance(part, str) for part in parts):
            return {"str": "".join(parts), "line": token.line}
        return {"interp": parts, "line": token.line}


def outline_sources(sources: dict[str, str]) -> dict[str, Outline]:
    return {path: BicepReader(text, path).file() for path, text in sources.items()}


@cache
def infra_outlines() -> dict[str, Outline]:
    files = sorted(INFRA.rglob("*.bicep"))
    return outline_sources(
        {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in files}
    )


def outline_of(path: str) -> Outline:
    return infra_outlines()[path]


# --- Walking expressions --------------------------------------------------------------


def pairs(node: Node) -> Iterator[tuple[str, int, Node]]:
    for key, line, value in node.get("object", []):
        yield str(key), int(line), value


def field(node: Node, key: str) -> Node | None:
    return next((value for k, _, value in pairs(node) if k == key), None)


def alternatives(
    node: Node, outline: Outline, seen: frozenset = frozenset()
) -> Iterator:
    """The values a node may take that can be seen before deployment: variables
    resolved, both branches of `?:`, and the allowed values (or the default) of a
    parameter. Anything else is yielded as it is."""
    if "ref" in node:
        name = node["ref"]
        if name in outline["vars"] and name not in seen:
            yield from alternatives(outline["vars"][name], outline, seen | {name})
        elif name in outline["params"]:
            param = outline["params"][name]
            for candidate in param["allowed"] or [param["default"]]:
                if candidate is not None:
                    yield from alternatives(candidate, outline, seen)
        return
    if node.get("op") == "?:":
        for branch in node["args"][1:]:
            yield from alternatives(branch, outline, seen)
        return
    if "if" in node:  # the body of `[for ...: if (...) {...}]`
        yield from alternatives(node["then"], outline, seen)
        return
    yield node


def items(node: Node, outline: Outline) -> Iterator[Node]:
    """The items an array-valued node may hold: literal arrays, loop bodies and the
    arrays concat() joins, through variables and `?:`."""
    for alternative in alternatives(node, outline):
        if "array" in alternative:
            for item in alternative["array"]:
                yield from alternatives(item, outline)
        elif "loop" in alternative:
            yield from alternatives(alternative["loop"], outline)
        elif alternative.get("call") == "concat":
            for part in alternative["args"]:
                yield from items(part, outline)


def join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def literal_kind(node: Node) -> str | None:
    for kind in ("str", "int", "bool", "object", "array"):
        if kind in node:
            return kind
    return None


# --- Checking against the type definitions --------------------------------------------


@dataclass(frozen=True)
class Problem:
    kind: str  # api-version, unknown, read-only, existing, required, enum, type
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class TypeRef:
    types: list[dict[str, Any]]
    index: int

    @property
    def entry(self) -> dict[str, Any]:
        return self.types[self.index]

    def follow(self, ref: dict[str, str]) -> "TypeRef":
        return TypeRef(self.types, int(ref["$ref"].removeprefix("#/")))

    @property
    def name(self) -> str:
        return self.entry.get("name", self.entry["$type"])


class Definitions:
    """The bicep-types-az resource types, keyed by lower-case type@version."""

    def __init__(self, folder: Path) -> None:
        self.bodies: dict[str, TypeRef] = {}
        for path in sorted(folder.glob("*/*/types.json")):
            types = json.loads(path.read_text(encoding="utf-8"))
            for entry in types:
                if entry["$type"] == "ResourceType":
                    body = TypeRef(types, 0).follow(entry["body"])
                    self.bodies[entry["name"].lower()] = body

    def versions(self, kind: str) -> list[str]:
        prefix = f"{kind.lower()}@"
        return sorted(
            k.removeprefix(prefix) for k in self.bodies if k.startswith(prefix)
        )


def definitions_folder() -> Path:
    if (AZURE_TYPES / "README.md").is_file():
        return AZURE_TYPES
    message = f"The Azure type definitions are missing: expected {AZURE_TYPES}."
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@cache
def load_definitions(folder: Path) -> Definitions:
    return Definitions(folder)


@pytest.fixture(scope="module")
def definitions() -> Definitions:
    return load_definitions(definitions_folder())


@dataclass
class ResourceCheck:
    """One resource declaration checked against its body type."""

    definitions: Definitions
    outline: Outline
    path: str
    label: str = ""

    def problem(self, kind: str, line: int, message: str) -> Problem:
        return Problem(kind, f"{self.path}:{line}", f"{self.label}: {message}")

    def resource(self, record: Node, parent_type: str | None = None) -> Iterator:
        kind, _, version = record["type"].partition("@")
        if parent_type and "/" not in kind:
            parent_kind, _, parent_version = parent_type.partition("@")
            kind, version = f"{parent_kind}/{kind}", version or parent_version
        full_type = f"{kind}@{version}"
        self.label = f"{record['symbol']} ({full_type})"
        body_type = self.definitions.bodies.get(full_type.lower())
        if body_type is None:
            known = ", ".join(self.definitions.versions(kind)) or "none"
            yield self.problem(
                "api-version",
                record["line"],
                f"{full_type} is not in the definitions (versions there: {known})",
            )
        elif record["existing"]:
            for key, line, _ in pairs(record["body"]):
                if key not in EXISTING_KEYS:
                    yield self.problem(
                        "existing", line, f"{key} cannot be set on an existing resource"
                    )
        else:
            yield from self.object(
                record["body"], body_type, "", record["line"], top=True
            )
        for child in record["body"].get("resources", []):
            yield from ResourceCheck(
                self.definitions, self.outline, self.path
            ).resource(child, full_type)

    def value(self, node: Node, expected: TypeRef, at: str, line: int) -> Iterator:
        for alternative in alternatives(node, self.outline):
            yield from self.concrete(alternative, expected, at, line)

    def concrete(self, node: Node, expected: TypeRef, at: str, line: int) -> Iterator:
        entry = expected.entry
        kind, given = entry["$type"], literal_kind(node)
        line = node.get("line", line)
        if kind == "AnyType":
            return
        if kind == "ArrayType":
            if given in (None, "array") or "loop" in node:
                for item in items(node, self.outline):
                    yield from self.value(
                        item, expected.follow(entry["itemType"]), f"{at}[]", line
                    )
                return
        elif kind in ("ObjectType", "DiscriminatedObjectType"):
            if given == "object":
                yield from self.object(node, expected, at, line)
                return
        elif kind in ("UnionType", "StringLiteralType", "StringType"):
            if given == "str":
                yield from self.enum(node, expected, at, line)
                return
        elif (kind, given) in (("IntegerType", "int"), ("BooleanType", "bool")):
            return
        if given is not None:
            wanted = kind.removesuffix("Type").lower()
            if kind in ("UnionType", "StringLiteralType"):
                wanted = "string"
            yield self.problem(
                "type", line, f"{at} is given a {given}, where the type is {wanted}"
            )

    def enum(self, node: Node, expected: TypeRef, at: str, line: int) -> Iterator:
        entry = expected.entry
        options = (
            [expected.follow(e).entry for e in entry["elements"]]
            if entry["$type"] == "UnionType"
            else [entry]
        )
        values = [o["value"] for o in options if o["$type"] == "StringLiteralType"]
        if values and node["str"] not in values:
            shown = ", ".join(repr(v) for v in values)
            open_enum = len(values) < len(options)
            yield self.problem(
                "enum",
                line,
                f"{at} is {node['str']!r}, which is not one of {shown}"
                + (" (Bicep would accept it; Azure may not)" if open_enum else ""),
            )

    def object(
        self, node: Node, expected: TypeRef, at: str, line: int, top: bool = False
    ) -> Iterator:
        properties = dict(expected.entry.get("properties", {}))
        additional = expected.entry.get("additionalProperties")
        discriminator = expected.entry.get("discriminator")
        required = True
        if discriminator is not None:
            properties.update(expected.entry["baseProperties"])
            chosen = field(node, discriminator) or {}
            elements = expected.entry["elements"]
            if chosen.get("str") in elements:
                element = expected.follow(elements[chosen["str"]]).entry
                properties.update(element["properties"])
            else:
                # Without a known variant only the names can be checked.
                required = False
                for ref in elements.values():
                    properties.update(expected.follow(ref).entry["properties"])
                if "str" in chosen:
                    shown = ", ".join(repr(v) for v in elements)
                    yield self.problem(
                        "enum",
                        chosen.get("line", line),
                        f"{join(at, discriminator)} is {chosen['str']!r}, "
                        f"which is not one of {shown}",
                    )
        by_lower = {name.lower(): name for name in properties}
        given = set()
        for key, key_line, value in pairs(node):
            if top and key in BICEP_KEYS:
                continue
            if key == discriminator:  # checked above
                given.add(key)
                continue
            name = by_lower.get(key.lower())
            if name is None:
                if additional is None:
                    yield self.problem(
                        "unknown",
                        key_line,
                        f"{join(at, key)} is not a property of {expected.name}",
                    )
                else:
                    yield from self.value(
                        value, expected.follow(additional), join(at, key), key_line
                    )
                continue
            if name != key:
                yield self.problem(
                    "unknown",
                    key_line,
                    f"{join(at, key)} is spelled {name} in the definitions",
                )
            given.add(name)
            prop = properties[name]
            if prop.get("flags", 0) & READ_ONLY:
                yield self.problem(
                    "read-only", key_line, f"{join(at, name)} is read-only"
                )
                continue
            yield from self.value(
                value, expected.follow(prop["type"]), join(at, name), key_line
            )
        if not required:
            return
        for name, prop in properties.items():
            flags = prop.get("flags", 0)
            if flags & REQUIRED and not flags & READ_ONLY and name not in given:
                yield self.problem(
                    "required",
                    line,
                    f"{join(at, name)} is required by {expected.name}",
                )


def check_outline(
    definitions: Definitions, path: str, outline: Outline
) -> list[Problem]:
    problems: list[Problem] = []
    for record in outline["resources"]:
        check = ResourceCheck(definitions, outline, path)
        problems.extend(check.resource(record))
    return problems


def declarations(outline: Outline) -> Iterator[tuple[Node, Node | None]]:
    """Every resource record with its enclosing resource, children included."""

    def walk(record: Node, parent: Node | None) -> Iterator[tuple[Node, Node | None]]:
        yield record, parent
        for child in record["body"].get("resources", []):
            yield from walk(child, record)

    for record in outline["resources"]:
        yield from walk(record, None)


def test_it_reads_every_resource_declaration_in_infra() -> None:
    declared = re.compile(r"^\s*resource\s+[A-Za-z_]\w*\s+'", re.MULTILINE)
    for path, outline in infra_outlines().items():
        text = (ROOT / path).read_text(encoding="utf-8")
        found = [record["line"] for record, _ in declarations(outline)]
        assert len(found) == len(declared.findall(text)), path
    assert sum(len(list(declarations(o))) for o in infra_outlines().values()) > 20


def test_every_resource_matches_the_azure_type_definitions(
    definitions: Definitions,
) -> None:
    problems = [
        str(problem)
        for path, outline in infra_outlines().items()
        for problem in check_outline(definitions, path, outline)
    ]
    assert not problems, "\n".join(problems)


# A PostgreSQL server with its sku, for snippets to go on from.
POSTGRES = """resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: 'psql-example'
  location: 'westeurope'
  sku: {
    name: 'Standard_B1ms'
    tier: 'Burstable'
  }
"""

# A valid container registry, for the snippets to end as they need.
REGISTRY = """
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: 'crexample'
  location: 'westeurope'
  sku: {
    name: 'Basic'
  }
"""

# Each snippet has one mistake; the checker must report exactly it, at its line.
SNIPPETS = {
    "unknown-property": (
        "unknown",
        9,
        "properties.anonymousPullEnabled is not a property of RegistryProperties",
        REGISTRY
        + """  properties: {
    anonymousPullEnabled: false
  }
}
""",
    ),
    "read-only-property": (
        "read-only",
        9,
        "properties.loginServer is read-only",
        REGISTRY
        + """  properties: {
    loginServer: 'crexample.azurecr.io'
  }
}
""",
    ),
    "closed-enum": (
        "enum",
        9,
        "identity.type is 'Managed', which is not one of",
        REGISTRY
        + """  identity: {
    type: 'Managed'
  }
}
""",
    ),
    "unknown-api-version": (
        "api-version",
        2,
        "Microsoft.ContainerRegistry/registries@2099-01-01 is not in the definitions",
        REGISTRY.replace("@2023-07-01", "@2099-01-01") + "}\n",
    ),
    "enum-through-a-variable-in-a-loop": (
        "enum",
        2,
        "properties.template.containers[].probes[].type is 'Alive'",
        """
var probeType = 'Alive'
resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: 'ca-example'
  location: 'westeurope'
  properties: {
    template: {
      containers: [for name in ['a', 'b']: {
        name: name
        image: 'example.azurecr.io/app:1'
        probes: [
          {
            type: probeType
          }
        ]
      }]
    }
  }
}
""",
    ),
    "nested-child-resource": (
        "unknown",
        14,
        "properties.colour is not a property of",
        "\n"
        + POSTGRES
        + """
  resource database 'databases' = {
    name: 'app'
    properties: {
      charset: 'UTF8'
      colour: 'blue'
    }
  }
}
""",
    ),
    "existing-reference": (
        "existing",
        4,
        "location cannot be set on an existing resource",
        """
resource id 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: 'id-example'
  location: 'westeurope'
}
""",
    ),
    "discriminated-criteria": (
        "enum",
        12,
        "properties.criteria.odata.type is 'Microsoft.Azure.Monitor.SingleMetric'",
        """
resource alert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert'
  location: 'global'
  properties: {
    severity: 2
    enabled: true
    scopes: []
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleMetric'
      allOf: []
    }
  }
}
""",
    ),
}

CLEAN_SNIPPET = (
    """
@allowed([
  'User'
  'ServicePrincipal'
])
param principalType string = 'User'
param principalId string
param roleDefinitionId string

"""
    + POSTGRES
    + """  properties: {
    version: empty(principalId) ? '16' : '15'
  }

  resource database 'databases' = {
    name: 'app'
  }
}

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(server.id, principalId, roleDefinitionId)
  scope: server
  properties: {
    principalId: principalId
    principalType: principalType
    roleDefinitionId: roleDefinitionId
  }
}
"""
)


def test_the_reader_follows_bicep_operator_precedence() -> None:
    text = "var a = !empty(x) ? x.y[0].z : 'none'\nvar b = p || !q && r == 's'\n"
    variables = outline_sources({"precedence.bicep": text})["precedence.bicep"]["vars"]
    test, yes, _ = variables["a"]["args"]
    assert variables["a"]["op"] == "?:"
    assert test == {"op": "!", "args": [{"call": "empty", "args": [{"ref": "x"}]}]}
    assert yes["op"] == "property" and yes["args"][1:] == ["z"]
    either = variables["b"]
    assert [either["op"], either["args"][1]["op"]] == ["||", "&&"]
    assert either["args"][1]["args"][1]["op"] == "=="


def test_the_reader_refuses_what_it_cannot_read() -> None:
    with pytest.raises(BicepSyntaxError, match=r"lambda\.bicep:2: "):
        outline_sources({"lambda.bicep": "var a = 1\nvar b = filter(a, x => x)\n"})


@cache
def snippet_outlines() -> dict[str, Outline]:
    sources = {f"{name}.bicep": snippet[-1] for name, snippet in SNIPPETS.items()}
    return outline_sources({**sources, "clean.bicep": CLEAN_SNIPPET})


@pytest.mark.parametrize("name", SNIPPETS)
def test_the_checker_reports_a_mistake_at_its_line(
    definitions: Definitions, name: str
) -> None:
    kind, line, message, _ = SNIPPETS[name]
    path = f"{name}.bicep"
    problems = check_outline(definitions, path, snippet_outlines()[path])
    assert [(p.kind, p.where) for p in problems] == [(kind, f"{path}:{line}")], problems
    assert message in problems[0].message


def test_the_checker_passes_a_correct_snippet(definitions: Definitions) -> None:
    outline = snippet_outlines()["clean.bicep"]
    assert check_outline(definitions, "clean.bicep", outline) == []
    assert len(list(declarations(outline))) == 3


def test_the_checker_reports_a_wrong_enum_given_to_a_parameter(
    definitions: Definitions,
) -> None:
    text = CLEAN_SNIPPET.replace("  'ServicePrincipal'", "  'Robot'")
    outline = outline_sources({"param.bicep": text})["param.bicep"]
    problems = check_outline(definitions, "param.bicep", outline)
    assert [(p.kind, p.where) for p in problems] == [("enum", "param.bicep:4")]


# --- The templates as azd runs them ---------------------------------------------------


class Unknown(Exception):
    """A value only the deployment knows: a resource's property, a secret azd makes."""


UNKNOWN = object()

# What azd puts in the environment itself: the names, and who is logged in.
AZD_ENVIRONMENT = {
    "AZURE_ENV_NAME": "chatsite-test",
    "AZURE_LOCATION": "swedencentral",
    "AZURE_PRINCIPAL_ID": "00000000-0000-0000-0000-0000000000aa",
}


def bicep_string(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


@dataclass
class Template:
    """One Bicep file with its parameters bound, evaluated as far as that is possible
    before the deployment runs. Resource properties and module outputs are Unknown;
    uniqueString() stands for a fixed token."""

    path: str
    params: dict[str, Any]

    @property
    def outline(self) -> Outline:
        return outline_of(self.path)

    def evaluate(self, node: Node | None) -> Any:
        if node is None:
            raise Unknown("no value")
        for literal in ("str", "int", "bool"):
            if literal in node:
                return node[literal]
        if "null" in node:
            return None
        if "interp" in node:
            return "".join(
                part if isinstance(part, str) else bicep_string(self.evaluate(part))
                for part in node["interp"]
            )
        if "array" in node:
            return [self.evaluate(item) for item in node["array"]]
        if "object" in node:
            return {key: self.evaluate(value) for key, _, value in pairs(node)}
        if "ref" in node:
            return self.lookup(node["ref"])
        if "call" in node:
            return self.call(node["call"], node["args"])
        return self.operation(node.get("op"), node.get("args", []))

    def operation(self, op: str | None, args: list[Any]) -> Any:
        if op == "?:":
            return self.evaluate(args[1] if self.evaluate(args[0]) else args[2])
        if op == "||":
            return self.evaluate(args[0]) or self.evaluate(args[1])
        if op == "&&":
            return self.evaluate(args[0]) and self.evaluate(args[1])
        if op == "!":
            return not self.evaluate(args[0])
        if op in ("==", "!="):
            same = self.evaluate(args[0]) == self.evaluate(args[1])
            return same if op == "==" else not same
        if op == "property":
            base, *names = args
            declared = {r["symbol"]: r for r in self.outline["resources"]}
            if names == ["name"] and base.get("ref") in declared:
                return self.evaluate(field(declared[base["ref"]]["body"], "name"))
        raise Unknown(op)

    def call(self, function: str, args: list[Node]) -> Any:
        if function == "empty":
            return not self.evaluate(args[0])
        if function == "string":
            return bicep_string(self.evaluate(args[0]))
        if function == "toLower":
            return self.evaluate(args[0]).lower()
        if function == "uniqueString":
            return "uniquestring0"
        if function == "concat":
            values = [self.evaluate(arg) for arg in args]
            if all(isinstance(v, list) for v in values):
                return [item for value in values for item in value]
            return "".join(bicep_string(v) for v in values)
        raise Unknown(function)

    def lookup(self, name: str) -> Any:
        params, variables = self.outline["params"], self.outline["vars"]
        if name in self.params:
            if self.params[name] is UNKNOWN:
                raise Unknown(name)
            return self.params[name]
        if name in params:
            return self.evaluate(params[name]["default"])
        if name in variables:
            return self.evaluate(variables[name])
        raise Unknown(name)

    def resolve(self, node: Node) -> Node:
        """The expression a variable or a `?:` stands for, without evaluating it."""
        while True:
            if node.get("ref") in self.outline["vars"]:
                node = self.outline["vars"][node["ref"]]
            elif node.get("op") == "?:":
                test, yes, no = node["args"]
                node = yes if self.evaluate(test) else no
            else:
                return node

    def member(self, node: Node, *keys: str) -> Node:
        for key in keys:
            found = field(self.resolve(node), key)
            assert found is not None, f"{self.path}: no {key}"
            node = found
        return node

    def items(self, node: Node) -> list[Node]:
        """The items of an array; where a `?:` cannot be decided yet, both branches'."""
        while node.get("ref") in self.outline["vars"]:
            node = self.outline["vars"][node["ref"]]
        if node.get("op") == "?:":
            test, yes, no = node["args"]
            try:
                return self.items(yes if self.evaluate(test) else no)
            except Unknown:
                return self.items(yes) + self.items(no)
        if node.get("call") == "concat":
            return [item for arg in node["args"] for item in self.items(arg)]
        return [self.resolve(item) for item in node["array"]]

    def deploys(self, record: Node) -> bool:
        return record["condition"] is None or bool(self.evaluate(record["condition"]))

    def deployed_resources(self) -> list[Node]:
        return [r for r, _ in declarations(self.outline) if self.deploys(r)]

    def resource(self, symbol: str) -> Node:
        (record,) = [r for r, _ in declarations(self.outline) if r["symbol"] == symbol]
        return record

    def module(self, name: str) -> "Template":
        """The module's file, bound to the parameters this template passes it."""
        module = self.outline["modules"][name]
        bound: dict[str, Any] = {}
        for key, _, value in pairs(self.member(module["body"], "params")):
            try:
                bound[key] = self.evaluate(value)
            except Unknown:
                bound[key] = UNKNOWN
        path = (Path(self.path).parent / module["path"]).as_posix()
        return Template(path, bound)

    def outputs(self) -> dict[str, str]:
        """The outputs azd can see already, as it stores them in the environment."""
        found = {}
        for name, node in self.outline["outputs"].items():
            try:
                found[name] = bicep_string(self.evaluate(node))
            except Unknown:
                continue
        return found


def azd_parameters(environment: dict[str, str]) -> dict[str, Any]:
    """main.parameters.json filled in as azd does from an environment: `${NAME}` and
    `${NAME=default}`; a parameter left empty by unset variables is not passed, so its
    Bicep default applies."""
    main = outline_of("infra/main.bicep")
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    values: dict[str, Any] = {}
    for name, spec in given.items():
        unset = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal unset
            variable, _, default = match[1].partition("=")
            unset = unset or variable not in environment
            return environment.get(variable) or default

        text = re.sub(r"\$\{([^}]*)\}", substitute, spec["value"])
        if text == "" and unset:
            continue
        kind = main["params"][name]["type"]
        if kind == "bool":
            assert text in ("true", "false"), f"{name}: {text!r}"
            values[name] = text == "true"
        else:
            values[name] = int(text) if kind == "int" else text
    return values


def provision(environment: dict[str, str]) -> tuple[Template, dict[str, str]]:
    """main.bicep as `azd provision` deploys it, and the environment azd keeps after
    it (outputs included: the next provision reads them back)."""
    main = Template("infra/main.bicep", azd_parameters(environment))
    return main, environment | main.outputs()


@pytest.mark.parametrize("backend", ["azure_agents", "foundry", "openai", "local"])
def test_a_bare_azd_up_grants_no_roles_on_an_account_that_does_not_exist(
    backend: str,
) -> None:
    environment = AZD_ENVIRONMENT | {"CHAT_BACKEND": backend}
    for run in ("first provision", "second provision"):
        main, environment = provision(environment)
        modules = main.outline["modules"]
        assert not main.deploys(modules["aiServices"]), run
        assert not main.deploys(modules["aiAccess"]), run
    assert environment["AZURE_AI_SERVICES_NAME"] == ""


@pytest.mark.parametrize(
    ("setting", "account"),
    [
        ({"AZURE_AI_SERVICES_NAME": "my-foundry"}, "my-foundry"),
        ({"CREATE_AI_SERVICES": "true"}, "ais-uniquestring0"),
    ],
)
def test_the_roles_go_to_the_account_named_or_created(
    setting: dict[str, str], account: str
) -> None:
    environment = AZD_ENVIRONMENT | setting
    for run in ("first provision", "second provision"):
        main, environment = provision(environment)
        assert main.deploys(main.outline["modules"]["aiAccess"]), run
        assert main.module("aiAccess").params["aiServicesName"] == account, run


def canonical(node: Any) -> str:
    """An expression without its line numbers, to compare two of them."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "line"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(node), sort_keys=True)


def test_a_conditional_module_s_outputs_are_read_only_under_its_condition() -> None:
    main = outline_of("infra/main.bicep")
    conditions = {
        name: canonical(module["condition"])
        for name, module in main["modules"].items()
        if module["condition"] is not None
    }
    unguarded: list[str] = []

    def walk(node: Any, guards: frozenset[tuple[str, bool]], where: str) -> None:
        if isinstance(node, list):
            for value in node:
                walk(value, guards, where)
            return
        if not isinstance(node, dict):
            return
        if node.get("op") == "?:":
            test, yes, no = node["args"]
            walk(test, guards, where)
            walk(yes, guards | {(canonical(test), True)}, where)
            walk(no, guards | {(canonical(test), False)}, where)
            return
        if node.get("op") == "property":
            base, *names = node["args"]
            module = base.get("ref") if isinstance(base, dict) else None
            guarded = (conditions.get(module), True) in guards
            if module in conditions and names[:1] == ["outputs"] and not guarded:
                unguarded.append(f"{where}: {module}.outputs.{names[1]}")
        for value in node.values():
            walk(value, guards, where)

    for name, module in main["modules"].items():
        walk(module["body"], frozenset(), f"module {name}")
    for kind in ("vars", "outputs"):
        for name, node in main[kind].items():
            walk(node, frozenset(), f"{kind[:-1]} {name}")
    assert conditions, "main.bicep has no conditional module"
    assert not unguarded, unguarded


@pytest.mark.parametrize("logged_in_as", [None, "User", "ServicePrincipal"])
def test_the_roles_for_whoever_runs_azd_name_their_principal_type(
    logged_in_as: str | None,
) -> None:
    environment = AZD_ENVIRONMENT | {"AZURE_AI_SERVICES_NAME": "my-foundry"}
    if logged_in_as:
        environment["AZURE_PRINCIPAL_TYPE"] = logged_in_as
    main, _ = provision(environment)
    access = main.module("aiAccess")
    granted: dict[str, set[str]] = {}
    for record in access.deployed_resources():
        if not record["type"].startswith("Microsoft.Authorization/roleAssignments@"):
            continue
        properties = access.member(record["body"], "properties")
        try:
            principal = access.evaluate(field(properties, "principalId"))
        except Unknown:
            principal = "the app's identity"
        kind = access.evaluate(field(properties, "principalType"))
        granted.setdefault(principal, set()).add(kind)
    assert granted == {
        "the app's identity": {"ServicePrincipal"},
        AZD_ENVIRONMENT["AZURE_PRINCIPAL_ID"]: {logged_in_as or "User"},
    }


def depends_on(record: Node) -> set[str]:
    listed = field(record["body"], "dependsOn") or {"array": []}
    return {item["ref"] for item in listed["array"] if "ref" in item}


def test_children_of_one_resource_deploy_one_after_another() -> None:
    """An AI Services account and a PostgreSQL server take one operation at a time;
    their children, created together, fail now and then with RequestConflict."""
    unordered = []
    for path, outline in infra_outlines().items():
        siblings: dict[str, list[Node]] = {}
        for record, enclosing in declarations(outline):
            parent = field(record["body"], "parent") or {}
            parent_symbol = enclosing["symbol"] if enclosing else parent.get("ref")
            if parent_symbol and not record["existing"]:
                siblings.setdefault(parent_symbol, []).append(record)
        for parent_symbol, children in siblings.items():
            after = {child["symbol"]: depends_on(child) for child in children}
            for child in children:  # everything each one waits for, transitively
                waits = after[child["symbol"]]
                while new := {d for w in waits for d in after.get(w, ())} - waits:
                    waits |= new
            for i, first in enumerate(children):
                for second in children[i + 1 :]:
                    a, b = first["symbol"], second["symbol"]
                    if a not in after[b] and b not in after[a]:
                        unordered.append(
                            f"{path}:{second['line']}: {a} and {b}, "
                            f"both children of {parent_symbol}, may deploy at once"
                        )
    assert not unordered, "\n".join(unordered)


@dataclass(frozen=True)
class Placeholder:
    """What a placeholder image is known to do: the port it listens on, given the
    container's environment, and whether it answers 200 on any path."""

    port: Callable[[dict[str, str]], int]
    answers_any_path: bool


PLACEHOLDERS = {
    # Azure's sample page, on port 80 whatever the environment says.
    "mcr.microsoft.com/azuredocs/containerapps-helloworld:latest": Placeholder(
        port=lambda environment: 80, answers_any_path=False
    ),
    # GoogleCloudPlatform/kubernetes-engine-samples, quickstarts/hello-app: one
    # handler for every path; $PORT, else 8080.
    "us-docker.pkg.dev/google-samples/containers/gke/hello-app:1.0": Placeholder(
        port=lambda environment: int(environment.get("PORT", "8080")),
        answers_any_path=True,
    ),
}


def test_the_placeholder_image_answers_where_the_ingress_and_the_probes_look() -> None:
    """The first provision runs a placeholder until azd deploys the real image, and
    azd then swaps the image alone, so the ingress, the probes and the environment
    are the real app's from the start. A placeholder that does not answer them fails
    activation, and its restarts fire the restart alert, on every new environment."""
    web = Template("infra/modules/web.bicep", {"exists": False})
    app = web.resource("app")
    containers = web.member(app["body"], "properties", "template", "containers")
    (container,) = web.items(containers)
    environment = {}
    for variable in web.items(web.member(container, "env")):
        try:
            value = web.evaluate(field(variable, "value"))
        except Unknown:
            continue  # a secret, or known only once deployed
        environment[web.evaluate(field(variable, "name"))] = value
    image = web.evaluate(web.member(container, "image"))
    assert image in PLACEHOLDERS, f"add what {image} listens on to PLACEHOLDERS"
    placeholder = PLACEHOLDERS[image]
    ingress = web.member(app["body"], "properties", "configuration", "ingress")
    target_port = web.evaluate(web.member(ingress, "targetPort"))
    probes = web.items(web.member(container, "probes"))
    probe_ports = {web.evaluate(web.member(p, "httpGet", "port")) for p in probes}
    listens_on = placeholder.port(environment)
    assert listens_on == target_port, f"{image} listens on {listens_on}"
    assert probe_ports == {target_port}
    assert placeholder.answers_any_path, f"{image} may not answer the probe paths"
