"""`RetrieveTotalRecordCount`: per-table row counts from a snapshot up to 24 hours old.

Dataverse answers this function from a daily snapshot, not a live count (unlike `$count`,
which stops at 5,000). The simulator keeps the same contract: the first call for a table
takes its count, later calls repeat it until the snapshot is a day old, so a client must
treat the number as an estimate.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timedelta

from .errors import ODataError, bad_query
from .org import Org
from .responses import Response, json_response

SNAPSHOT_MAX_AGE = timedelta(hours=24)
_CALL = re.compile(r"^RetrieveTotalRecordCount\(EntityNames=(?P<arg>.*)\)$")


class RecordCounts:
    def __init__(self, org: Org) -> None:
        self.org = org
        self._snapshots: dict[str, tuple[datetime, int]] = {}
        self._lock = threading.Lock()

    def answer(self, head: str, params: dict[str, str], base: str) -> Response:
        names = self._entity_names(head, params)
        values = [self._count(name) for name in names]
        return json_response(
            {
                "@odata.context": f"{base}$metadata#Microsoft.Dynamics.CRM."
                "RetrieveTotalRecordCountResponse",
                "EntityRecordCountCollection": {
                    "Count": len(names),
                    "IsReadOnly": False,
                    "Keys": names,
                    "Values": values,
                },
            }
        )

    def _entity_names(self, head: str, params: dict[str, str]) -> list[str]:
        call = _CALL.match(head)
        if call is None:
            raise bad_query(
                "RetrieveTotalRecordCount takes one parameter, EntityNames, for example "
                "RetrieveTotalRecordCount(EntityNames=@p1)?@p1=['account','contact']."
            )
        argument = call.group("arg")
        if argument.startswith("@"):
            if argument not in params:
                raise bad_query(f"The parameter alias '{argument}' has no value in the query.")
            argument = params[argument]
        try:
            names = json.loads(argument.replace("'", '"'))
        except ValueError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad_query(f"EntityNames must be a collection of strings, got {argument}.")
        for name in names:
            if name not in self.org.tables:
                raise ODataError(
                    404,
                    "0x80041102",
                    f"The entity with a name = '{name}' with namemapping = 'Logical' was not "
                    "found in the MetadataCache.",
                )
        return names

    def _count(self, entity: str) -> int:
        now = self.org.now()  # org time, so a fast-forwarded clock ages the snapshot too
        with self._lock:
            taken = self._snapshots.get(entity)
            if taken is None or now - taken[0] >= SNAPSHOT_MAX_AGE:
                with self.org.lock:
                    taken = (now, len(self.org.tables[entity].rows))
                self._snapshots[entity] = taken
            return taken[1]
