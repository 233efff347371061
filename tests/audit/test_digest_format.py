"""The audit digest's exact content, against an independent spelling of it: entries already
stored (v1 without a credential, v2 with one) must keep verifying whichever way the digest is
computed (one by one, or a batch's shared parts encoded once)."""

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from audit.integrity import entry_digest, entry_digester

KEY = b"test-audit-key"
AT = datetime(2026, 11, 27, 10, 0, 0, 500_001, tzinfo=UTC)


def spelled_out(content: list) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("credential_id", ["", "jwt:token-1"])
@pytest.mark.parametrize("ip", [None, "127.0.0.1", "2001:db8::0:1"])
def test_digest_content_is_stable(credential_id, ip):
    shared = {
        "entity_type": "transaction",
        "action": "transaction.purchase",
        "merchant_id": "m_1",
        "actor_id": "svc-é",
        "actor_role": "system",
        "ip": ip,
        "user_agent": 'agent "1.0", {x}',
        "created_at": AT,
        "credential_id": credential_id,
        "key": KEY,
    }
    changes = {"after": {"points": "12.50", "member": "sha:ab", "note": "façade"}}
    normalised_ip = {None: None, "127.0.0.1": "127.0.0.1", "2001:db8::0:1": "2001:db8::1"}[ip]
    content = ["v2" if credential_id else "v1", "transaction", "42", "transaction.purchase",
               "m_1", "svc-é", "system", normalised_ip, 'agent "1.0", {x}', changes,
               1_795_773_600_500_001]  # fmt: skip
    if credential_id:
        content.append(credential_id)
    expected = spelled_out(content)

    assert entry_digest(entity_id="42", changes=changes, **shared) == expected
    changes_json = json.dumps(changes, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert entry_digester(**shared)("42", changes_json) == expected


@pytest.mark.parametrize("entity_id", ["42", 'a"b\\c', "é\u2028\x00\n", "😀"])
def test_any_entity_id_is_encoded_as_canonical_json(entity_id):
    changes_json = '{"after":{}}'
    content = ["v1", "transaction", entity_id, "a", "m", "u", "r", None, "", {"after": {}},
               1_795_773_600_500_001]  # fmt: skip
    digest = entry_digester(
        entity_type="transaction", action="a", merchant_id="m", actor_id="u", actor_role="r",
        ip=None, user_agent="", created_at=AT, key=KEY,
    )  # fmt: skip
    assert digest(entity_id, changes_json) == spelled_out(content)
