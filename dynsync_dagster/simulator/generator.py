"""Deterministic synthetic accounts and contacts (DatasetSpec -> rows loaded into an Org)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .org import USD_CURRENCY_ID, Org

_FIRST = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Emma",
    "Felix",
    "Greta",
    "Hugo",
    "Ida",
    "Jonas",
    "Klara",
    "Lukas",
    "Mia",
    "Noah",
    "Olivia",
    "Paul",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Uwe",
    "Vera",
    "Wim",
    "Xenia",
    "Yusuf",
    "Zoe",
    "Lena",
    "Max",
    "Sofia",
    "Elias",
    "Nora",
    "Finn",
    "Lea",
    "Milan",
    "Eva",
    "Jan",
    "Lisa",
    "Tim",
    "Marie",
    "Tom",
]
_LAST = [
    "Smith",
    "Jansen",
    "Müller",
    "de",
    "Vries",
    "Garcia",
    "Rossi",
    "Novak",
    "Kowalski",
    "Dubois",
    "Silva",
    "Berg",
    "Hansen",
    "Costa",
    "Weber",
    "Bakker",
    "Visser",
    "Meyer",
    "Fischer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Koch",
    "Richter",
    "Klein",
    "Wolf",
    "Peeters",
    "Maes",
    "Jacobs",
    "Mertens",
    "Willems",
    "Claes",
    "Goossens",
    "Wouters",
    "O'Brien",
    "Nguyen",
    "Patel",
    "Kim",
    "Chen",
]
_JOBS = (
    "Purchasing Manager",
    "CFO",
    "CEO",
    "IT Director",
    "Marketing Lead",
    "Sales Representative",
    "Office Manager",
    "Engineer",
    "Analyst",
    None,
)
_ADJ = [
    "Adventure",
    "Blue",
    "Contoso",
    "Fabrikam",
    "Northwind",
    "Alpine",
    "Litware",
    "Proseware",
    "Tailspin",
    "Wide",
    "Coho",
]
_NOUN = [
    "Works",
    "Systems",
    "Traders",
    "Logistics",
    "Foods",
    "Labs",
    "Partners",
    "Energy",
    "Media",
    "Health",
    "Capital",
]
_SUFFIX = ("Inc.", "Ltd", "GmbH", "B.V.", "S.A.", "LLC", "AG", "plc")
_CITIES = (
    ("Amsterdam", "Netherlands"),
    ("Berlin", "Germany"),
    ("Redmond", "United States"),
    ("Lyon", "France"),
    ("Utrecht", "Netherlands"),
    ("München", "Germany"),
    ("Seattle", "United States"),
    ("Antwerpen", "Belgium"),
    ("Zürich", "Switzerland"),
    ("Wien", "Austria"),
    (None, None),
)
_DOMAINS = ("example.com", "contoso.com", "fabrikam.nl", "northwind.de", "litware.fr")
_BIRTH_ORIGIN = date(1950, 1, 1)


@dataclass(frozen=True)
class DatasetSpec:
    """What the simulator generates at start; everything is reproducible from `seed`."""

    accounts: int = 50
    contacts: int = 500
    sized_accounts: tuple[int, ...] = ()
    orphan_contacts: int = 0
    contact_parented_contacts: int = 0
    seed: int = 7
    history_days: int = 30
    # Marketo's custom sync filter: accounts and contacts get the Two Options column
    # new_synctomkto, with this share of records set to No and as many to Yes (the rest
    # empty). Off (None) by default: an org without the column syncs every record.
    sync_filter_no_share: float | None = None

    def validate(self) -> None:
        fixed = sum(self.sized_accounts) + self.orphan_contacts + self.contact_parented_contacts
        if (
            min(
                (self.accounts, self.contacts, self.orphan_contacts, *self.sized_accounts),
                default=0,
            )
            < 0
        ):
            raise ValueError("DatasetSpec counts must not be negative")
        if len(self.sized_accounts) > self.accounts:
            raise ValueError(
                f"sized_accounts has {len(self.sized_accounts)} entries "
                f"but accounts={self.accounts}"
            )
        if self.sync_filter_no_share is not None and not 0 <= self.sync_filter_no_share <= 0.5:
            raise ValueError("sync_filter_no_share must be between 0 and 0.5")
        if self.contacts < fixed:
            raise ValueError(
                f"contacts={self.contacts} is less than sum(sized_accounts) + orphan_contacts + "
                f"contact_parented_contacts = {fixed}; raise contacts"
            )
        if self.contacts > fixed and self.accounts == len(self.sized_accounts):
            raise ValueError(
                f"{self.contacts - fixed} contacts have no account to go to: every account is "
                "in sized_accounts; add accounts or lower contacts"
            )
        account_parented = self.contacts - self.orphan_contacts - self.contact_parented_contacts
        if self.contact_parented_contacts and account_parented == 0:
            raise ValueError(
                "contact-parented contacts need at least one account-parented contact as parent"
            )
        if self.history_days <= 0:
            raise ValueError("history_days must be positive")


_VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)


def _guid(rng: random.Random) -> str:
    """Same value as str(uuid.UUID(int=rng.getrandbits(128), version=4)), without building a
    UUID object: a million of those were a fifth of generation time."""
    h = f"{(rng.getrandbits(128) & _VERSION_MASK) | _VERSION_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def generate(spec: DatasetSpec, org: Org, owners: list[str]) -> None:
    """Fill an empty org; versions follow modifiedon order like a real org's history."""
    spec.validate()
    if spec.sync_filter_no_share is not None:
        for entity in ("account", "contact"):
            org.add_attribute(entity, SYNC_FILTER_FIELD, "BooleanType")
    gen = _Generator(spec, org, owners)
    for i in range(spec.accounts):
        gen.account(i)
    parents = _contact_parents(spec, gen.account_ids, gen.rng)
    for i in range(spec.contacts):
        gen.contact(i, parents)
    gen.set_primary_contacts()
    if spec.sync_filter_no_share is not None:
        _set_sync_filter(spec, org, gen)
    last = gen.number_versions()
    org.load("account", gen.account_rows, last)
    org.load("contact", gen.contact_rows, last)


SYNC_FILTER_FIELD = "new_synctomkto"


def _set_sync_filter(spec: DatasetSpec, org: Org, gen: _Generator) -> None:
    """No on a share of the records, Yes on as many, empty on the rest. A stream of its own,
    so every other generated value is the same with the filter on or off."""
    rng = random.Random(spec.seed + 1)
    share = spec.sync_filter_no_share or 0.0
    for entity, rows in (("account", gen.account_rows), ("contact", gen.contact_rows)):
        slot = org.tables[entity].slots[SYNC_FILTER_FIELD]
        for row in rows.values():
            draw = rng.random()
            row[slot] = False if draw < share else True if draw < 2 * share else None


def _contact_parents(
    spec: DatasetSpec, account_ids: list[str], rng: random.Random
) -> list[str | None]:
    """The parent account of each account-parented contact, in contact order: the sized
    accounts' contacts first, then the orphans (None), then the rest spread at random.

    Contacts past the end of this list get a contact as parent."""
    others = account_ids[len(spec.sized_accounts) :]
    parents: list[str | None] = []
    for idx, count in enumerate(spec.sized_accounts):
        parents.extend([account_ids[idx]] * count)
    parents.extend([None] * spec.orphan_contacts)
    spread = spec.contacts - len(parents) - spec.contact_parented_contacts
    parents.extend(others[rng.randrange(len(others))] for _ in range(spread))
    return parents


class _Generator:
    """The rows being generated, and the one random stream every value is drawn from in turn."""

    def __init__(self, spec: DatasetSpec, org: Org, owners: list[str]) -> None:
        self.rng = random.Random(spec.seed)
        self.org = org
        self.owners = owners
        self.start_ts = int(org.now().timestamp())
        self.history = spec.history_days * 86400
        self.accounts = org.tables["account"]
        self.contacts = org.tables["contact"]
        self.account_rows: dict[str, list[Any]] = {}
        self.account_ids: list[str] = []
        self.contact_rows: dict[str, list[Any]] = {}
        self.account_parented: list[str] = []
        self.stamps: list[tuple[int, int, str]] = []  # (modifiedon ts, entity index, id)

    def times(self) -> tuple[datetime, datetime, int]:
        """createdon and modifiedon within the history window, and modifiedon as a timestamp."""
        created = self.start_ts - self.rng.randrange(self.history)
        modified = created + self.rng.randrange(self.start_ts - created + 1)
        return (
            datetime.fromtimestamp(created, UTC),
            datetime.fromtimestamp(modified, UTC),
            modified,
        )

    def account(self, i: int) -> None:
        """Generate the i-th account."""
        a = self.accounts.slots
        aid = _guid(self.rng)
        r = self.rng.getrandbits(64)
        row = self.accounts.new_row()
        city, country = _CITIES[r % len(_CITIES)]
        adjective, noun = _ADJ[(r >> 8) % len(_ADJ)], _NOUN[(r >> 16) % len(_NOUN)]
        name = f"{adjective} {noun} {i + 1} {_SUFFIX[(r >> 24) % len(_SUFFIX)]}"
        slug = name.split()[0].lower()
        created, modified, mts = self.times()
        row[a["accountid"]] = aid
        row[a["name"]] = name
        row[a["accountnumber"]] = f"ACC-{i + 1:06d}"
        row[a["industrycode"]] = 1 + (r >> 28) % 33
        row[a["revenue"]] = float(((r >> 34) % 50_000) * 1000)
        row[a["transactioncurrencyid"]] = USD_CURRENCY_ID
        row[a["numberofemployees"]] = (r >> 20) % 5000 + 1
        row[a["address1_city"]] = city
        row[a["address1_country"]] = country
        row[a["telephone1"]] = f"+31 20 {(r >> 40) % 900 + 100} {(r >> 12) % 10000:04d}"
        row[a["websiteurl"]] = f"https://www.{slug}{i + 1}.example.com"
        row[a["emailaddress1"]] = f"info@{slug}{i + 1}.example.com"
        row[a["description"]] = None if r % 3 else f"{name} is a long-standing customer."
        row[a["creditlimit"]] = float(((r >> 44) % 100) * 1000)
        row[a["creditonhold"]] = bool((r >> 50) % 10 == 0)
        row[a["customertypecode"]] = 1 + (r >> 52) % 12
        row[a["ownerid"]] = self.owners[(r >> 56) % len(self.owners)]
        row[a["owneridtype"]] = "systemuser"
        # About one in ten accounts has a parent account among the earlier ones.
        row[a["parentaccountid"]] = self.account_ids[(r >> 5) % i] if i and r % 10 == 1 else None
        row[a["statecode"]] = 0
        row[a["statuscode"]] = 1
        row[a["merged"]] = False
        row[a["isprivate"]] = False
        row[a["createdon"]] = created
        row[a["modifiedon"]] = modified
        self.account_rows[aid] = row
        self.account_ids.append(aid)
        self.stamps.append((mts, 0, aid))

    def contact(self, i: int, parents: list[str | None]) -> None:
        """Generate the i-th contact, under parents[i] or, past its end, under a contact."""
        c = self.contacts.slots
        cid = _guid(self.rng)
        r = self.rng.getrandbits(64)
        row = self.contacts.new_row()
        if i < len(parents):
            parent, parent_type = parents[i], "account"
        else:
            parent = self.account_parented[r % len(self.account_parented)]
            parent_type = "contact"
        first = _FIRST[r % len(_FIRST)]
        last = _LAST[(r >> 8) % len(_LAST)]
        created, modified, mts = self.times()
        row[c["contactid"]] = cid
        row[c["firstname"]] = first
        row[c["lastname"]] = last
        row[c["fullname"]] = f"{first} {last}"
        row[c["emailaddress1"]] = (
            f"{first}.{last}.{i + 1}@{_DOMAINS[(r >> 16) % 5]}".lower().replace(" ", "")
        )
        row[c["jobtitle"]] = _JOBS[(r >> 20) % len(_JOBS)]
        row[c["telephone1"]] = f"+49 30 {(r >> 24) % 9000 + 1000} {(r >> 38) % 10000:04d}"
        row[c["mobilephone"]] = None if r % 4 == 0 else f"+31 6 {(r >> 30) % 100_000_000:08d}"
        row[c["birthdate"]] = (
            None if r % 5 == 0 else _BIRTH_ORIGIN + timedelta(days=(r >> 12) % 20000)
        )
        if parent is not None:
            row[c["parentcustomerid"]] = parent
            row[c["parentcustomeridtype"]] = parent_type
            row[c["accountid"]] = parent if parent_type == "account" else None
        row[c["ownerid"]] = self.owners[(r >> 44) % len(self.owners)]
        row[c["owneridtype"]] = "systemuser"
        row[c["governmentid"]] = (
            f"{(r >> 2) % 900 + 100}-{(r >> 14) % 90 + 10}-{(r >> 22) % 10000:04d}"
        )
        row[c["annualincome"]] = float(((r >> 48) % 200) * 1000 + 20000)
        row[c["transactioncurrencyid"]] = USD_CURRENCY_ID
        row[c["statecode"]] = 0
        row[c["statuscode"]] = 1
        row[c["createdon"]] = created
        row[c["modifiedon"]] = modified
        self.contact_rows[cid] = row
        if parent_type == "account" and parent is not None:
            self.account_parented.append(cid)
        self.stamps.append((mts, 1, cid))

    def set_primary_contacts(self) -> None:
        """Each account's primary contact is its first contact, when it has one."""
        a, c = self.accounts.slots, self.contacts.slots
        for cid in self.account_parented:
            arow = self.account_rows[self.contact_rows[cid][c["parentcustomerid"]]]
            if arow[a["primarycontactid"]] is None:
                arow[a["primarycontactid"]] = cid

    def number_versions(self) -> int:
        """Give every row a versionnumber in modifiedon order; returns the last one."""
        self.stamps.sort()
        version = self.org.current_version
        tables = (self.account_rows, self.contact_rows)
        slots = (self.accounts.slots["versionnumber"], self.contacts.slots["versionnumber"])
        for version_offset, (_, which, rid) in enumerate(self.stamps, start=1):
            tables[which][rid][slots[which]] = version + version_offset
        return version + len(self.stamps)
