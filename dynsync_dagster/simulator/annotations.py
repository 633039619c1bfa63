"""The Prefer header: page size, change tracking and which instance annotations to include."""

from __future__ import annotations

from dataclasses import dataclass

FORMATTED = "OData.Community.Display.V1.FormattedValue"
LOOKUP_LOGICAL_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"
NAVIGATION_PROPERTY = "Microsoft.Dynamics.CRM.associatednavigationproperty"
TOTAL_RECORD_COUNT = "Microsoft.Dynamics.CRM.totalrecordcount"
TOTAL_LIMIT_EXCEEDED = "Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"
GLOBAL_METADATA_VERSION = "Microsoft.Dynamics.CRM.globalmetadataversion"


@dataclass(frozen=True)
class Annotations:
    """Which annotation families a request asked for (what the row cache is keyed on)."""

    formatted: bool = False
    lookup_logical_name: bool = False
    navigation_property: bool = False
    total_count: bool = False
    metadata_version: bool = False
    requested: str = ""


NO_ANNOTATIONS = Annotations()


def _matches(patterns: list[str], name: str) -> bool:
    included = False
    for pattern in patterns:
        exclude = pattern.startswith("-")
        p = pattern[1:] if exclude else pattern
        hit = p == "*" or p == name or (p.endswith(".*") and name.startswith(p[:-1]))
        if hit:
            # OData: the most specific match wins; an exclusion of the exact name beats "*".
            if exclude:
                return False
            included = True
    return included


def parse_annotations(value: str) -> Annotations:
    patterns = [p.strip() for p in value.strip().strip('"').split(",") if p.strip()]
    return Annotations(
        formatted=_matches(patterns, FORMATTED),
        lookup_logical_name=_matches(patterns, LOOKUP_LOGICAL_NAME),
        navigation_property=_matches(patterns, NAVIGATION_PROPERTY),
        total_count=_matches(patterns, TOTAL_RECORD_COUNT),
        metadata_version=_matches(patterns, GLOBAL_METADATA_VERSION),
        requested=value.strip().strip('"'),
    )


@dataclass(frozen=True)
class Preferences:
    max_page_size: int | None = None
    track_changes: bool = False
    annotations: Annotations = NO_ANNOTATIONS


def _split_preferences(header: str) -> list[str]:
    """Split on commas outside double quotes (include-annotations lists contain commas)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_prefer(headers: list[str]) -> Preferences:
    """Unknown preferences and unparsable sizes are ignored, as OData servers do."""
    size: int | None = None
    track = False
    annotations = NO_ANNOTATIONS
    for header in headers:
        for pref in _split_preferences(header):
            name, _, value = pref.partition("=")
            name = name.strip().lower()
            if name == "odata.maxpagesize":
                try:
                    size = int(value.strip().strip('"'))
                except ValueError:
                    continue
                if size < 1:
                    size = None
            elif name == "odata.track-changes":
                track = True
            elif name == "odata.include-annotations":
                annotations = parse_annotations(value)
    return Preferences(size, track, annotations)
