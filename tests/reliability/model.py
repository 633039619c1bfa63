"""A small reference model of the rules (README.md, "The rules"), written from the rules as
stated, not from sync/rules.py.

It holds what the DuckDB store should contain and moves it forward the way the rules say:
`cycle(snapshot, ...)` with what Dynamics holds when a cycle succeeds, `local_edit(...)` for
`dynsync set-account-field`. Values are kept as the text DuckDB shows for them
(`CAST(x AS VARCHAR)`); the activity log shows them the way Dynamics does (`activity_text`).

Where the rules leave a choice open, the model takes this reading (and says so here):
- a contact that leaves its account for none logs its changes against the account it left;
- a field newly added to the selection fills every record without activity (first values);
- a contact that moves logs its changes even when its new account is over the contact limit
  (the limit is about an account's fields changing in Dynamics, rule 7);
- a local edit logs only contacts whose value it actually changes;
- a local edit is overwritten only by a Dynamics update made after it (modifiedon has second
  precision, so the soak never edits an account in the same second Dynamics changed it);
- a deleted record keeps its row, flagged; only its key, flag and account are compared.

The sync filter (README rule 8) and Block Field Updates (rule 9), as this model reads them:
- the filter decides by the value Dynamics holds when a successful cycle reads the record
  (`Dynamics*.sync`: None empty, True Yes, False No). No on a record never synced keeps it out
  (`filtered`: what the store's `filtered_records` must hold). No on a stored, live record at a
  higher version makes it stale: version and values stay, and it takes no Dynamics change, its
  deletion included. A higher version without No is a normal update that ends staleness;
- a stale contact keeps its account (membership) and its own values, but its account values
  follow its stored account like any contact's, logged against that account;
- a field added to the selection while a record is stale or deleted has no synced value on
  it: NULL on the record, and on the contacts that carry it (they follow the stored account
  row; a stale contact may outlive its account, which Dynamics deleted with its contacts);
- an account kept out by the filter that turns Yes is created; its contacts already in the
  store take its values as an update from Dynamics: logged, and rule 7 applies to them;
- rule 7 counts the account's live contacts in the store after this cycle's contact changes
  (stale contacts in, contacts kept out by the filter not): what its contacts are here. With
  the filter this differs from Dynamics' count, and it matters: counting Dynamics' contacts
  made the soak disagree with the store within 80 cycles on each seed tried;
- a local edit through a contact whose account the filter kept out is refused: that account is
  not in the store, and the README says its contacts have NULL account values (a pending edit
  there would reach only the contacts already stored, not those that join later);
- a stale account and a stale contact can be edited locally like any; a pending edit on a stale
  account survives until Dynamics updates it with a value other than No;
- dynamics_sync: when Dynamics updates a stored account (not a new one; a stale one turning
  Yes included) and a blocked field's new value differs from what its contacts carried before
  the cycle (stored value, pending local edit on top), that carried value is pinned as a pending
  edit unless one is pending already; Dynamics never drops a pending edit of a blocked field.
  A field new to the selection takes its first values, blocked or not (not checked: the soak
  blocks only fields always selected; see README.md, "Known product bugs"). Once the block is gone,
  the next Dynamics update of the account (not an earlier one) overwrites the kept value;
- local_update: the edit is refused and changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from dynsync_dagster.simulator import Org

SYNC = "Dynamics sync"
LOCAL = "Local update"
SYNC_FILTER_FIELD = "new_synctomkto"  # the sync filter's column (the setting's default)

# How each field the soak may select is stored: its kind decides columns and text.
ACCOUNT_KINDS = {
    "name": "text",
    "accountnumber": "text",
    "address1_city": "text",
    "description": "text",
    "numberofemployees": "int",
    "industrycode": "choice",
    "revenue": "money",
    "creditlimit": "money",
    "parentaccountid": "lookup",
}
CONTACT_KINDS = {
    "firstname": "text",
    "lastname": "text",
    "emailaddress1": "text",
    "jobtitle": "text",
}


class LocalEditRefused(Exception):
    """The model expects `set_account_field` to refuse this edit and change nothing."""


def as_text(kind: str, value: Any) -> str | None:
    """A Dynamics value as the text DuckDB shows for its stored column."""
    if value is None:
        return None
    if kind == "money":
        return str(Decimal(repr(float(value))).quantize(Decimal("0.0001")))
    if kind in ("int", "choice"):
        return str(int(value))
    if kind == "lookup":
        return str(value).lower()
    return str(value)


def activity_text(kind: str, text: str | None, label: str | None) -> str | None:
    """A stored value as the activity log shows it, "the way Dynamics shows them":
    a choice by its label (its code when the option has none), money as `1234.5`."""
    if kind == "choice" and label is not None:
        return label
    if kind == "money" and text is not None:
        return format(Decimal(text).normalize(), "f")  # 12.0000 -> 12, 0.5000 -> 0.5
    return text


def columns(name: str, kind: str, value: Any, labels: Mapping[int, str]) -> dict[str, str | None]:
    """The column(s) one field occupies: choices keep a label, lookups the table they name."""
    out = {name: as_text(kind, value)}
    if kind == "choice":
        out[f"{name}_label"] = None if value is None else labels.get(int(value))
    if kind == "lookup":
        out[f"{name}_type"] = None if value is None else "account"
    return out


@dataclass(frozen=True)
class DynamicsAccount:
    version: int
    values: dict[str, Any]
    sync: bool | None = None  # the sync filter's column: None empty, True Yes, False No


@dataclass(frozen=True)
class DynamicsContact:
    version: int
    accountid: str | None  # the parent customer when it is an account
    values: dict[str, Any]
    sync: bool | None = None


@dataclass(frozen=True)
class Snapshot:
    """What Dynamics holds, as the simulator reports it."""

    accounts: dict[str, DynamicsAccount]
    contacts: dict[str, DynamicsContact]

    @classmethod
    def of(cls, org: Org) -> Snapshot:
        accounts = {}
        for aid in org.account_ids():
            row = org.get_account(aid)
            values = {f: row.get(f) for f in ACCOUNT_KINDS}
            flag = row.get(SYNC_FILTER_FIELD)
            accounts[aid] = DynamicsAccount(int(row["versionnumber"]), values, flag)
        contacts = {}
        for cid in org.contact_ids():
            row = org.get_contact(cid)
            parent = row.get("parentcustomerid")
            account = parent if row.get("parentcustomeridtype") == "account" else None
            values = {f: row.get(f) for f in CONTACT_KINDS}
            flag = row.get(SYNC_FILTER_FIELD)
            contacts[cid] = DynamicsContact(int(row["versionnumber"]), account, values, flag)
        return cls(accounts, contacts)


@dataclass
class StoredAccount:
    version: int
    values: dict[str, str | None]  # column -> text, Dynamics' values (never local edits)
    deleted: bool = False
    stale: bool = False  # sync_filtered: Dynamics said No after it synced


@dataclass
class StoredContact:
    version: int
    accountid: str | None
    values: dict[str, str | None]  # own columns
    account_values: dict[str, str | None]  # account column (without `account_`) -> text
    deleted: bool = False
    stale: bool = False


@dataclass(frozen=True)
class PendingEdit:
    value: str | None
    label: str | None
    dynamics_version: int  # the account's version in Dynamics when the edit was made


@dataclass
class Model:
    """The store as the rules say it must be."""

    labels: Mapping[int, str]  # industrycode options
    contact_limit: int
    account_fields: tuple[str, ...] = ()  # synced now (selected and readable)
    contact_fields: tuple[str, ...] = ()
    # block_field_updates as the settings say now: account field -> local_update/dynamics_sync
    blocks: Mapping[str, frozenset[str]] = field(default_factory=dict)
    accounts: dict[str, StoredAccount] = field(default_factory=dict)
    contacts: dict[str, StoredContact] = field(default_factory=dict)
    edits: dict[tuple[str, str], PendingEdit] = field(default_factory=dict)
    activity: list[tuple] = field(default_factory=list)
    suppressed: int = 0  # rows the contact limit kept out of the log (rule 7)
    filtered: set[tuple[str, str]] = field(default_factory=set)  # (entity, id) kept out
    pins: int = 0  # values rule 9 kept on the contacts
    thawed: Counter = field(default_factory=Counter)  # stale records brought up to date

    def blocked(self, name: str, kind: str) -> bool:
        return kind in self.blocks.get(name, frozenset())

    # ---- columns ----------------------------------------------------------------------------

    def account_columns(self, values: Mapping[str, Any], fields: Iterable[str]) -> dict:
        out: dict[str, str | None] = {}
        for f in fields:
            out.update(columns(f, ACCOUNT_KINDS[f], values.get(f), self.labels))
        return out

    def contact_columns(self, values: Mapping[str, Any], fields: Iterable[str]) -> dict:
        out: dict[str, str | None] = {}
        for f in fields:
            out.update(columns(f, CONTACT_KINDS[f], values.get(f), self.labels))
        return out

    def effective(self, accountid: str | None) -> dict[str, str | None]:
        """Rule 4 and 5: the account's values as its contacts carry them, local edits on top.
        An account the store does not have (kept out by the filter) gives NULLs."""
        empty = self.account_columns({}, self.account_fields)
        account = self.accounts.get(accountid) if accountid else None
        if account is None:
            return empty
        values = {c: account.values.get(c) for c in empty}
        for f in self.account_fields:
            edit = self.edits.get((accountid, f))
            if edit is not None:
                values[f] = edit.value
                if ACCOUNT_KINDS[f] == "choice":
                    values[f"{f}_label"] = edit.label
        return values

    # ---- a successful cycle -----------------------------------------------------------------

    def cycle(
        self,
        dynamics: Snapshot,
        account_fields: tuple[str, ...],
        contact_fields: tuple[str, ...],
    ) -> None:
        """Bring the store to what Dynamics holds, logging what the rules say to log.

        A backfill is the same: it catches up like a scheduled cycle before re-reading its
        window, so it sees deletions too.
        """
        fresh = set(account_fields) - set(self.account_fields)  # first values, no activity
        fresh_own = set(contact_fields) - set(self.contact_fields)
        self.account_fields, self.contact_fields = account_fields, contact_fields
        self._clear_fresh(fresh, fresh_own)
        carried = {aid: self.effective(aid) for aid in self.accounts}  # before this cycle
        updated = self._sync_accounts(dynamics, carried, fresh)
        self._drop_overwritten_edits(dynamics, updated)
        self._sync_contacts(dynamics, updated, fresh)
        self.filtered = {
            ("account", aid)
            for aid, dyn in dynamics.accounts.items()
            if dyn.sync is False and aid not in self.accounts
        } | {
            ("contact", cid)
            for cid, dyn in dynamics.contacts.items()
            if dyn.sync is False and cid not in self.contacts
        }

    def _clear_fresh(self, fresh: set[str], fresh_own: set[str]) -> None:
        """A field added to the selection starts empty: what Dynamics holds fills it on the
        live records below; a stale or deleted record keeps it NULL (nothing synced it)."""
        for a in self.accounts.values():
            a.values.update(self.account_columns({}, fresh))
        for c in self.contacts.values():
            c.values.update(self.contact_columns({}, fresh_own))

    def _sync_accounts(
        self, dynamics: Snapshot, carried: Mapping[str, Mapping], fresh: set[str]
    ) -> set[str]:
        """Rules 1, 3, 5, 8, 9: a higher versionnumber is an update unless Dynamics says No;
        the same one is not. Returns the accounts created or updated."""
        updated: set[str] = set()
        for aid, dyn in dynamics.accounts.items():
            values = self.account_columns(dyn.values, self.account_fields)
            stored = self.accounts.get(aid)
            if stored is None:
                if dyn.sync is not False:  # No on a record never synced: kept out
                    self.accounts[aid] = StoredAccount(dyn.version, values)
                    updated.add(aid)  # its contacts kept out of its values take them now
                continue
            if dyn.version > stored.version and not stored.deleted:
                if dyn.sync is False:
                    stored.stale = True  # values and version stay the last synced ones
                    continue
                self._pin_blocked(aid, carried[aid], values, dyn.version, fresh)
                updated.add(aid)
                self.thawed["accounts"] += stored.stale
                stored.version, stored.values, stored.stale = dyn.version, values, False
            elif not stored.stale:  # the same version: fills fields new to the selection
                stored.version, stored.values = dyn.version, values
        for aid, stored in self.accounts.items():
            if aid not in dynamics.accounts and not stored.stale:
                stored.deleted = True
        return updated

    def _pin_blocked(
        self,
        aid: str,
        carried: Mapping[str, str | None],
        values: Mapping[str, str | None],
        version: int,
        fresh: set[str],
    ) -> None:
        """Rule 9, dynamics_sync: the contacts keep the value they carried, as a pending edit."""
        for f in self.account_fields:
            if not self.blocked(f, "dynamics_sync") or f in fresh or (aid, f) in self.edits:
                continue
            if values[f] != carried[f]:
                self.edits[(aid, f)] = PendingEdit(carried[f], carried.get(f"{f}_label"), version)
                self.pins += 1

    def _drop_overwritten_edits(self, dynamics: Snapshot, updated: set[str]) -> None:
        """Rule 5: Dynamics speaking after a local edit overwrites it, unless the field is
        blocked for Dynamics updates (rule 9)."""
        for (aid, f), edit in list(self.edits.items()):
            if aid not in updated or self.blocked(f, "dynamics_sync"):
                continue
            if dynamics.accounts[aid].version > edit.dynamics_version:
                del self.edits[(aid, f)]

    def _sync_contacts(self, dynamics: Snapshot, updated: set[str], fresh: set[str]) -> None:
        """Rules 4, 6, 7, 8: contacts take their account's values; what changes is logged."""
        before = {cid: c.accountid for cid, c in self.contacts.items()}
        new = self._sync_contact_records(dynamics)
        members: dict[str, int] = {}  # rule 7 counts the contacts in the store
        for c in self.contacts.values():
            if c.accountid is not None and not c.deleted:
                members[c.accountid] = members.get(c.accountid, 0) + 1
        for cid, stored in self.contacts.items():
            if stored.deleted:
                continue
            new_values = self.effective(stored.accountid)
            if cid not in new:  # a new record takes its first values: not a change
                moved = before[cid] != stored.accountid  # a contact that moves is always logged
                suppressed = (
                    not moved
                    and stored.accountid in updated
                    and members.get(stored.accountid, 0) > self.contact_limit
                )
                logged_against = stored.accountid or before[cid]
                self._log_changes(
                    cid, logged_against, stored.account_values, new_values, fresh, suppressed
                )
            stored.account_values = new_values

    def _sync_contact_records(self, dynamics: Snapshot) -> set[str]:
        """The contacts' own records (rules 1, 3, 8); returns the ids created."""
        new: set[str] = set()
        for cid, dyn in dynamics.contacts.items():
            own = self.contact_columns(dyn.values, self.contact_fields)
            stored = self.contacts.get(cid)
            if stored is None:
                if dyn.sync is not False:
                    self.contacts[cid] = StoredContact(dyn.version, dyn.accountid, own, {})
                    new.add(cid)
                continue
            if stored.deleted:  # the soak never restores a record
                continue
            if dyn.version > stored.version:
                if dyn.sync is False:
                    stored.stale = True  # keeps its account and own values
                    continue
                stored.version, stored.accountid, stored.values = dyn.version, dyn.accountid, own
                self.thawed["contacts"] += stored.stale
                stored.stale = False
            elif not stored.stale:  # the same version: fills fields new to the selection
                stored.values = own
        for cid, stored in self.contacts.items():
            if cid not in dynamics.contacts and not stored.stale:
                stored.deleted = True
        return new

    def _log_changes(
        self,
        cid: str,
        accountid: str | None,
        old_values: Mapping[str, str | None],
        new_values: Mapping[str, str | None],
        fresh: set[str],
        suppressed: bool,
    ) -> None:
        """Rules 6, 7: a row per field whose value changes, or a count of the suppressed."""
        for f in self.account_fields:
            old, new = old_values.get(f), new_values[f]
            if f in fresh or old == new:
                continue
            if suppressed:
                self.suppressed += 1
                continue
            label = f"{f}_label"
            kind = ACCOUNT_KINDS[f]
            shown_old = activity_text(kind, old, old_values.get(label))
            shown_new = activity_text(kind, new, new_values.get(label))
            self.activity.append((cid, accountid, f, shown_old, shown_new, SYNC))

    # ---- a local edit -------------------------------------------------------------------------

    def local_edit(
        self, contact_id: str, field_name: str, value: str | None, dynamics_version: int
    ) -> int:
        """Rule 5 and 6: the edit on every contact of the account; returns rows logged."""
        if self.blocked(field_name, "local_update"):
            raise LocalEditRefused(f"{field_name} is blocked for local updates")
        contact = self.contacts.get(contact_id)
        if contact is None or contact.deleted or contact.accountid is None:
            raise LocalEditRefused(f"contact {contact_id} has no account in the store")
        if contact.accountid not in self.accounts:
            raise LocalEditRefused(f"account {contact.accountid} was kept out by the sync filter")
        if field_name not in self.account_fields:
            raise LocalEditRefused(f"{field_name} is not a synced account field")
        kind = ACCOUNT_KINDS[field_name]
        text = _typed_text(kind, value)
        label = None
        if kind == "choice" and text is not None:
            if int(text) not in self.labels:
                raise LocalEditRefused(f"{value} is not an option of {field_name}")
            label = self.labels[int(text)]
        aid = contact.accountid
        logged = 0
        for cid, other in self.contacts.items():
            if other.accountid != aid or other.deleted:
                continue
            old = other.account_values.get(field_name)
            if old != text:
                old_label = other.account_values.get(f"{field_name}_label")
                shown_old = activity_text(kind, old, old_label)
                shown_new = activity_text(kind, text, label)
                self.activity.append((cid, aid, field_name, shown_old, shown_new, LOCAL))
                logged += 1
            other.account_values[field_name] = text
            if kind == "choice":
                other.account_values[f"{field_name}_label"] = label
        self.edits[(aid, field_name)] = PendingEdit(text, label, dynamics_version)
        return logged

    # ---- what to compare ------------------------------------------------------------------------

    def expected_accounts(self) -> dict[str, tuple]:
        cols = list(self.account_columns({}, self.account_fields))
        out = {}
        for aid, a in self.accounts.items():
            if a.deleted:
                out[aid] = (True,)
            else:
                out[aid] = (False, a.stale, str(a.version), *(a.values.get(c) for c in cols))
        return out

    def expected_contacts(self) -> dict[str, tuple]:
        own = list(self.contact_columns({}, self.contact_fields))
        acc = list(self.account_columns({}, self.account_fields))
        out = {}
        for cid, c in self.contacts.items():
            if c.deleted:
                out[cid] = (True, c.accountid)
            else:
                out[cid] = (
                    False,
                    c.accountid,
                    c.stale,
                    *(c.values.get(k) for k in own),
                    *(c.account_values.get(k) for k in acc),
                )
        return out


def _typed_text(kind: str, value: str | None) -> str | None:
    """The text DuckDB shows after casting an edit's value to the column type."""
    if value is None:
        return None
    try:
        if kind in ("int", "choice"):
            return str(int(value.strip()))
        if kind == "money":
            return str(Decimal(value.strip()).quantize(Decimal("0.0001")))
    except (ValueError, InvalidOperation):
        raise LocalEditRefused(f"{value!r} is not a valid {kind}") from None
    return value
