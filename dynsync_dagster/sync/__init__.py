"""One sync cycle: stage what Dynamics sent, apply the account-sync rules (rules.py: the
numbered rules of README.md), log the changes (activity.py), commit and publish; and local
edits of account fields (local_edit.py)."""
