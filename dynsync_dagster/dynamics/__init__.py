"""Talking to Dynamics 365 (the Dataverse Web API): sign-in, requests with retries, pages of
records, and which fields the sync user can read. Knows nothing of the store."""
