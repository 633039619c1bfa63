"""Realistic random edits of the org, for the trickle thread and ad-hoc demos."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from .schema import INDUSTRY_OPTIONS

if TYPE_CHECKING:
    from .org import Org

_JOBS = ("Buyer", "Head of Finance", "CTO", "Account Manager", "Consultant", "Director")


def random_change(org: Org, rng: random.Random) -> str:
    """One change, weighted like a sales team's day: mostly edits, a few creates/moves/deletes."""
    with org.lock:
        accounts = org.tables["account"].sorted_ids
        contacts = org.tables["contact"].sorted_ids
        roll = rng.random()
        if not accounts or roll < 0.02:
            aid = org.create_account(
                name=f"New Venture {rng.randrange(10**6)} Ltd",
                industrycode=rng.choice(INDUSTRY_OPTIONS)[0],
                numberofemployees=rng.randrange(1, 500),
            )
            return f"created account {aid}"
        aid = rng.choice(accounts)
        if roll < 0.35 or not contacts:
            field = rng.choice(("revenue", "numberofemployees", "industrycode", "telephone1"))
            value: object = {
                "revenue": float(rng.randrange(1, 50_000) * 1000),
                "numberofemployees": rng.randrange(1, 5000),
                "industrycode": rng.choice(INDUSTRY_OPTIONS)[0],
                "telephone1": f"+31 20 {rng.randrange(100, 999)} {rng.randrange(10000):04d}",
            }[field]
            org.update_account(aid, **{field: value})
            return f"updated account {aid} {field}"
        if roll < 0.45:
            cid = org.create_contact(
                aid, "account", firstname="New", lastname=f"Lead {rng.randrange(10**6)}"
            )
            return f"created contact {cid}"
        cid = rng.choice(contacts)
        if roll < 0.50:
            org.reparent_contact(cid, aid, "account")
            return f"moved contact {cid} to account {aid}"
        if roll < 0.52:
            org.delete_contact(cid)
            return f"deleted contact {cid}"
        org.update_contact(cid, jobtitle=rng.choice(_JOBS))
        return f"updated contact {cid} jobtitle"
