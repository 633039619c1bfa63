"""One sync cycle: stage what Dynamics sent, apply the account-sync rules (rules.py, the
rules of SPEC.md), commit and publish; and local edits of account fields."""
