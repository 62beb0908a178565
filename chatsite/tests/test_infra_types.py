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

Bicep is parsed by pycep, which lives in checkov's venv (see test_deploy), so parsing
runs there and hands back each file as JSON.
"""

import inspect
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from chatsite.tests.test_deploy import find_tool

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


# --- Parsing --------------------------------------------------------------------------


def print_bicep_outlines() -> None:
    """Reads {path: Bicep text} as JSON on stdin; prints {path: outline}.

    Runs in checkov's interpreter, sent there as source. An outline holds the params,
    vars, outputs, modules and resources of a file; every value is an expression tree
    of plain JSON: {"str"}, {"int"}, {"bool"}, {"null"}, {"ref": name},
    {"local": loop variable}, {"interp": parts}, {"array"}, {"object": [[key, line,
    value], ...], "resources": [child, ...]}, {"loop": body}, {"if", "then"} and
    {"op": rule, "args"} for operators and functions (rule names from pycep's grammar).
    """
    import json
    import re
    import sys

    from lark import Token, Tree
    from pycep import BicepParser

    parser = BicepParser().lark_parser
    escapes = {"n": "\n", "r": "\r", "t": "\t"}

    def unescape(text: str) -> str:
        return re.sub(r"\\(.)", lambda m: escapes.get(m[1], m[1]), text)

    def parse_expression(text: str, bound: frozenset[str]) -> dict:
        (var,) = parser.parse(f"var expression = {text}\n").children
        return value(var.children[2], bound)

    def quoted(token: Token, bound: frozenset[str]) -> dict:
        body, parts, literal, i = str(token)[1:-1], [], "", 0
        while i < len(body):
            if body[i] == "\\":
                literal += body[i : i + 2]
                i += 2
            elif body.startswith("${", i):
                depth, j, quote = 1, i + 2, False
                while depth:
                    quote ^= body[j] == "'"
                    if not quote:
                        depth += {"{": 1, "}": -1}.get(body[j], 0)
                    j += 1
                if literal:
                    parts.append(unescape(literal))
                parts.append(parse_expression(body[i + 2 : j - 1], bound))
                literal, i = "", j
            else:
                literal += body[i]
                i += 1
        if literal or not parts:
            parts.append(unescape(literal))
        if len(parts) == 1 and isinstance(parts[0], str):
            return {"str": parts[0], "line": token.line}
        return {"interp": parts, "line": token.line}

    def is_accessor(tree: Any) -> bool:
        return (
            isinstance(tree, Tree)
            and tree.data == "operator"
            and tree.children[0].data == "property_accessor"
        )

    def member(tree: Any, bound: frozenset[str]) -> Any:
        identifier = isinstance(tree, Tree) and tree.data == "string"
        if identifier and tree.children[0].type == "STRING":
            return str(tree.children[0])
        return value(tree, bound)

    def chain(tree: Tree, bound: frozenset[str], head: bool) -> list:
        left, right = tree.children
        parts = [value(left, bound) if head else member(left, bound)]
        if is_accessor(right):
            return parts + chain(right.children[0], bound, head=False)
        return [*parts, member(right, bound)]

    def value(tree: Any, bound: frozenset[str]) -> Any:
        if tree is None:
            return None
        if isinstance(tree, Token):
            return {"name": str(tree)}
        kind, kids = str(tree.data), tree.children
        if kind in ("operator", "function"):
            return value(kids[0], bound)
        if kind == "null":
            return {"null": True}
        if kind in ("true", "false"):
            return {"bool": kind == "true"}
        if kind == "int":
            return {"int": int(kids[0])}
        if kind == "string":
            token = kids[0]
            if token.type != "STRING":
                return quoted(token, bound)
            name = str(token)
            return {"local": name} if name in bound else {"ref": name}
        if kind == "multi_line_string":
            return {"str": str(kids[0])[3:-3], "line": kids[0].line}
        if kind == "array":
            return {"array": [value(kid, bound) for kid in kids]}
        if kind == "object":
            return obj(tree, bound)
        if kind == "loop":
            names = frozenset(str(t) for t in kids[0].children if isinstance(t, Token))
            return {"loop": value(kids[-1], bound | names)}
        if kind == "deploy_condition":
            return {"if": value(kids[0], bound), "then": value(kids[1], bound)}
        if kind == "property_accessor":
            return {"op": "property", "args": chain(tree, bound, head=True)}
        return {"op": kind, "args": [value(kid, bound) for kid in kids]}

    def obj(tree: Tree, bound: frozenset[str]) -> dict:
        pairs, children = [], []
        for kid in tree.children:
            if kid.data == "pair":
                (token,) = kid.children[0].children
                key = str(token)
                if key.startswith("'"):
                    key = unescape(key[1:-1])
                pairs.append([key, token.line, value(kid.children[1], bound)])
            elif kid.data == "child_resource":
                name, kind, existing, body = kid.children
                children.append(resource(name, kind, existing, body, bound))
        return {"object": pairs, "resources": children}

    def resource(
        name: Token, kind: Token, existing: Any, body: Any, bound: frozenset[str]
    ) -> dict:
        converted = value(body, bound)
        condition, loop = None, False
        if "if" in converted:
            condition, converted = converted["if"], converted["then"]
        if "loop" in converted:
            loop, converted = True, converted["loop"]
        if "if" in converted:
            condition, converted = converted["if"], converted["then"]
        return {
            "symbol": str(name),
            "type": str(kind)[1:-1],
            "existing": existing is not None,
            "line": name.line,
            "condition": condition,
            "loop": loop,
            "body": converted,
        }

    def outline(text: str) -> dict:
        result: dict = {
            "params": {},
            "vars": {},
            "outputs": {},
            "modules": {},
            "resources": [],
        }
        for element in parser.parse(text).children:
            kind, kids = str(element.data), element.children
            if kind == "param":
                decorators, name, data_type, default = kids
                allowed = None
                for decorator in decorators.children if decorators else []:
                    if decorator.data == "deco_allowed":
                        allowed = value(decorator.children[0], frozenset())["array"]
                result["params"][str(name)] = {
                    "type": str(data_type.children[0]),
                    "default": value(default, frozenset()),
                    "allowed": allowed,
                    "line": name.line,
                }
            elif kind == "var":
                result["vars"][str(kids[1])] = value(kids[2], frozenset())
            elif kind == "output":
                result["outputs"][str(kids[1])] = value(kids[3], frozenset())
            elif kind == "module":
                _, name, path, body = kids
                module = resource(name, path.children[0], None, body, frozenset())
                module["path"] = module.pop("type")
                result["modules"][str(name)] = module
            elif kind == "resource":
                _, name, kind_api, existing, body = kids
                result["resources"].append(
                    resource(name, kind_api.children[0], existing, body, frozenset())
                )
        return result

    outlines = {}
    for path, text in json.load(sys.stdin).items():
        try:
            outlines[path] = outline(text)
        except Exception as exc:
            outlines[path] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(outlines))


def pycep_python() -> str:
    """The interpreter checkov runs on, which has pycep."""
    checkov = find_tool("checkov")
    shebang = checkov.read_text(errors="replace").splitlines()[0]
    command = shebang.removeprefix("#!").split()
    if Path(command[0]).name == "env":
        return shutil.which(command[1]) or command[1]
    return command[0]


def outline_sources(sources: dict[str, str]) -> dict[str, Outline]:
    script = "\n".join(
        [
            "from __future__ import annotations",
            inspect.getsource(print_bicep_outlines),
            "print_bicep_outlines()",
        ]
    )
    result = subprocess.run(
        [pycep_python(), "-c", script],
        input=json.dumps(sources),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    outlines = json.loads(result.stdout)
    errors = {path: o["error"] for path, o in outlines.items() if "error" in o}
    assert not errors, errors
    return outlines


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
    if node.get("op") == "conditional":
        for branch in node["args"][1:]:
            yield from alternatives(branch, outline, seen)
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
        elif alternative.get("op") == "concat":
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
            yield self.problem("type", line, f"{at} is {given}, the type is {wanted}")

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
            yield self.problem(
                "enum", line, f"{at} is {node['str']!r}, which is not one of {shown}"
            )

    def object(
        self, node: Node, expected: TypeRef, at: str, line: int, top: bool = False
    ) -> Iterator:
        properties = dict(expected.entry.get("properties", {}))
        additional = expected.entry.get("additionalProperties")
        required = True
        if expected.entry["$type"] == "DiscriminatedObjectType":
            properties.update(expected.entry["baseProperties"])
            discriminator = expected.entry["discriminator"]
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
            if (
                expected.entry["$type"] == "DiscriminatedObjectType"
                and key == (expected.entry["discriminator"])
            ):
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


# Each snippet has one mistake; the checker must report exactly it, at its line.
SNIPPETS = {
    "unknown-property": (
        "unknown",
        9,
        "properties.anonymousPullEnabled is not a property of RegistryProperties",
        """
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: 'crexample'
  location: 'westeurope'
  sku: {
    name: 'Basic'
  }
  properties: {
    anonymousPullEnabled: false
  }
}
""",
    ),
    "read-only-property": (
        "read-only",
        9,
        "properties.loginServer is read-only",
        """
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: 'crexample'
  location: 'westeurope'
  sku: {
    name: 'Basic'
  }
  properties: {
    loginServer: 'crexample.azurecr.io'
  }
}
""",
    ),
    "closed-enum": (
        "enum",
        9,
        "identity.type is 'Managed', which is not one of",
        """
resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: 'crexample'
  location: 'westeurope'
  sku: {
    name: 'Basic'
  }
  identity: {
    type: 'Managed'
  }
}
""",
    ),
    "unknown-api-version": (
        "api-version",
        2,
        "Microsoft.ContainerRegistry/registries@2099-01-01 is not in the definitions",
        """
resource registry 'Microsoft.ContainerRegistry/registries@2099-01-01' = {
  name: 'crexample'
  location: 'westeurope'
  sku: {
    name: 'Basic'
  }
}
""",
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
        """
resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: 'psql-example'
  location: 'westeurope'
  sku: {
    name: 'Standard_B1ms'
    tier: 'Burstable'
  }

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

CLEAN_SNIPPET = """
@allowed([
  'User'
  'ServicePrincipal'
])
param principalType string = 'User'
param principalId string
param roleDefinitionId string

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: 'psql-example'
  location: 'westeurope'
  sku: {
    name: 'Standard_B1ms'
    tier: 'Burstable'
  }
  properties: {
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
