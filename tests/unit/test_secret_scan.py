"""The secret scan finds a secret value in plain and base64 forms, and only there."""

from __future__ import annotations

import base64

import pytest

from secret_scan import forms, scan

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def test_plain_and_base64_forms_are_found_where_they_are():
    basic = base64.b64encode(SECRET.encode()).decode()
    texts = {"status": '{"message": "cannot read s3://b/x.csv"}',
             "event": f"login with {SECRET} failed",
             "log": f"Authorization: Basic {basic}",
             "urlsafe": base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("=")}
    found = scan(texts, [SECRET])
    assert {f.split(":")[0] for f in found} == {"event", "log", "urlsafe"}
    assert all(SECRET not in f for f in found)  # the report does not repeat the value


def test_short_values_are_refused():
    with pytest.raises(ValueError, match="match by chance"):
        forms("abc")
