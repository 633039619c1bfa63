"""OData $filter parsing (the subset Dataverse clients use) into predicates over records."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import bad_query, not_implemented

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^']|'')*')
     |(?P<enum>[A-Za-z_][\w.]*'(?:[^']|'')*')
     |(?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))
     |(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-]))
     |(?P<date>\d{4}-\d{2}-\d{2}(?![\w:]))
     |(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
     |(?P<ident>[A-Za-z_][\w.]*(?:/[A-Za-z_][\w.]*)*)
     |(?P<dq>"(?:[^"\\]|\\.)*")
     |(?P<punct>[(),=\[\]])
    )""",
    re.VERBOSE,
)
COMPARISONS = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
}
FUNCTIONS = ("contains", "startswith", "endswith")
CRM = "Microsoft.Dynamics.CRM."
# Dataverse query functions served here; the others exist in Dataverse but not in the simulator.
CRM_FUNCTIONS = {"In": "list", "NotIn": "list", "Between": "pair", "NotBetween": "pair"}
_KEYWORDS = {"and", "or", "not", "null", "true", "false", *COMPARISONS, *FUNCTIONS}


@dataclass(frozen=True)
class Literal:
    kind: str  # string, guid, datetime, date, int, decimal, bool, null, enum
    value: Any

    @property
    def edm(self) -> str:
        return {
            "string": "Edm.String",
            "guid": "Edm.Guid",
            "datetime": "Edm.DateTimeOffset",
            "date": "Edm.Date",
            "int": "Edm.Int32",
            "decimal": "Edm.Decimal",
            "bool": "Edm.Boolean",
            "enum": "Edm.Enum",
        }.get(self.kind, "null")


# AST: ("and"|"or", left, right) | ("not", node) | ("cmp", op, prop, Literal)
#      | ("fn", name, prop, Literal) | ("crm", name, prop, [Literal, ...])
Node = tuple


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise bad_query(f"Syntax error at position {pos} in '{text}'.")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def _literal(kind: str, raw: str) -> Literal:
    try:
        if kind == "str":
            return Literal("string", raw[1:-1].replace("''", "'"))
        if kind == "dq":  # the JSON-style strings of a PropertyValues array
            return Literal("string", re.sub(r"\\(.)", r"\1", raw[1:-1]))
        if kind == "enum":
            return Literal("enum", raw[raw.index("'") + 1 : -1].replace("''", "'"))
        if kind == "dt":
            value = datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(UTC)
            return Literal("datetime", value)
        if kind == "guid":
            return Literal("guid", str(uuid.UUID(raw)))
        if kind == "date":
            return Literal("date", date.fromisoformat(raw))
        if kind == "num":
            if re.fullmatch(r"-?\d+", raw):
                return Literal("int", int(raw))
            return Literal("decimal", Decimal(raw))
    except (ValueError, InvalidOperation):
        pass
    raise bad_query(f"Unrecognized literal '{raw}' in $filter.")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise bad_query(f"Expression expected at position {len(self.text)} in '{self.text}'.")
        self.pos += 1
        return tok

    def expect(self, value: str) -> None:
        _, raw = self.take()
        if raw != value:
            raise bad_query(f"')' or operator expected at '{raw}' in '{self.text}'.")

    def word(self) -> str | None:
        tok = self.peek()
        return tok[1] if tok is not None and tok[0] == "ident" else None

    def parse(self) -> Node:
        node = self.or_expr()
        if self.peek() is not None:
            raise bad_query(f"Syntax error: unexpected '{self.peek()[1]}' in '{self.text}'.")  # type: ignore[index]
        return node

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.word() == "or":
            self.take()
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.unary()
        while self.word() == "and":
            self.take()
            node = ("and", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.word() == "not":
            self.take()
            return ("not", self.unary())
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok == ("punct", "("):
            node = self.or_expr()
            self.expect(")")
            return node
        if tok[0] == "ident" and tok[1] in FUNCTIONS and self.peek() == ("punct", "("):
            self.take()
            prop = self.property()
            self.expect(",")
            lit = self.literal()
            self.expect(")")
            return ("fn", tok[1], prop, lit)
        if tok[0] == "ident" and tok[1].startswith(CRM) and self.peek() == ("punct", "("):
            return self.crm_function(tok[1][len(CRM) :])
        if tok[0] != "ident" or tok[1] in _KEYWORDS:
            raise bad_query(f"Syntax error at '{tok[1]}' in '{self.text}': property expected.")
        op_tok = self.take()
        if op_tok[0] != "ident" or op_tok[1] not in COMPARISONS:
            raise bad_query(f"Syntax error at '{op_tok[1]}' in '{self.text}': operator expected.")
        return ("cmp", op_tok[1], tok[1], self.literal())

    def crm_function(self, name: str) -> Node:
        """`In(PropertyName='x',PropertyValues=["a","b"])` and its siblings (named arguments)."""
        if name not in CRM_FUNCTIONS:
            raise not_implemented(
                f"The query function {CRM}{name} (served: {', '.join(CRM_FUNCTIONS)})"
            )
        self.take()  # "("
        args: dict[str, Any] = {}
        while True:
            key = self.take()
            self.expect("=")
            args[key[1]] = self.values() if self.peek() == ("punct", "[") else self.literal()
            if self.take() == ("punct", ")"):
                break
        prop, values = args.get("PropertyName"), args.get("PropertyValues")
        if not isinstance(prop, Literal) or prop.kind != "string" or not isinstance(values, list):
            raise bad_query(
                f"{CRM}{name} needs PropertyName='<property>' and PropertyValues=[...] arguments."
            )
        if CRM_FUNCTIONS[name] == "pair" and len(values) != 2:
            raise bad_query(f"{CRM}{name} needs exactly two PropertyValues.")
        return ("crm", name, prop.value, values)

    def values(self) -> list[Literal]:
        self.take()  # "["
        out: list[Literal] = []
        while self.peek() != ("punct", "]"):
            out.append(self.literal())
            if self.peek() == ("punct", ","):
                self.take()
        self.take()
        return out

    def property(self) -> str:
        kind, raw = self.take()
        if kind != "ident" or raw in _KEYWORDS:
            raise bad_query(f"Syntax error at '{raw}' in '{self.text}': property expected.")
        return raw

    def literal(self) -> Literal:
        kind, raw = self.take()
        if kind == "ident":
            if raw == "null":
                return Literal("null", None)
            if raw in ("true", "false"):
                return Literal("bool", raw == "true")
            raise bad_query(f"Syntax error at '{raw}' in '{self.text}': literal expected.")
        if kind == "punct":
            raise bad_query(f"Syntax error at '{raw}' in '{self.text}': literal expected.")
        return _literal(kind, raw)


def parse_filter(text: str) -> Node:
    if not text.strip():
        raise bad_query("The $filter expression must not be empty.")
    return _Parser(text).parse()


def properties(node: Node) -> list[str]:
    """Every property a filter references (to validate them up front)."""
    kind = node[0]
    if kind in ("and", "or"):
        return properties(node[1]) + properties(node[2])
    if kind == "not":
        return properties(node[1])
    return [node[2]]


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def compile_filter(
    node: Node,
    getter: Callable[[str], Callable[[Any], Any]],
    check: Callable[[str, str, Literal], Any] | None = None,
) -> Callable[[Any], bool]:
    """Predicate over a record. `getter(prop)` gives a value accessor; `check(prop, op, literal)`
    validates the literal's type and returns the comparable literal value."""
    kind = node[0]
    if kind in ("and", "or"):
        left = compile_filter(node[1], getter, check)
        right = compile_filter(node[2], getter, check)
        if kind == "and":
            return lambda r: left(r) and right(r)
        return lambda r: left(r) or right(r)
    if kind == "not":
        inner = compile_filter(node[1], getter, check)
        return lambda r: not inner(r)
    if kind == "crm":
        return _crm_predicate(node, getter, check)
    _, op, prop, lit = node
    get = getter(prop)
    value = check(prop, op, lit) if check else lit.value
    value = _fold(value)
    if kind == "fn":
        if not isinstance(value, str):
            raise bad_query(f"The function '{op}' needs a string argument.")
        test = {
            "contains": lambda v: value in v,
            "startswith": lambda v: v.startswith(value),
            "endswith": lambda v: v.endswith(value),
        }[op]
        return lambda r: isinstance(v := get(r), str) and test(v.casefold())
    if lit.kind == "null":
        if op not in ("eq", "ne"):
            return lambda r: False
        return (lambda r: get(r) is None) if op == "eq" else (lambda r: get(r) is not None)
    # SQL semantics, as Dataverse evaluates filters in SQL: a null column matches no comparison.
    cmp = {
        "eq": lambda v: v == value,
        "ne": lambda v: v != value,
        "gt": lambda v: v > value,
        "ge": lambda v: v >= value,
        "lt": lambda v: v < value,
        "le": lambda v: v <= value,
    }[op]
    return lambda r: (v := get(r)) is not None and cmp(_fold(v))


def _crm_predicate(
    node: Node,
    getter: Callable[[str], Callable[[Any], Any]],
    check: Callable[[str, str, Literal], Any] | None,
) -> Callable[[Any], bool]:
    _, name, prop, literals = node
    get = getter(prop)
    values = [_fold(check(prop, name, lit) if check else lit.value) for lit in literals]
    # SQL semantics again: a null column is neither in nor out of a list or range.
    if name in ("In", "NotIn"):
        wanted = set(values)
        inside = name == "In"
        return lambda r: (v := get(r)) is not None and (_fold(v) in wanted) == inside
    low, high = values
    between = name == "Between"
    return lambda r: (v := get(r)) is not None and (low <= _fold(v) <= high) == between
