"""The callout server's secrets (nats_auth/keys.py) and the URL credential helpers (pure)."""

import pytest

from compozy_operator.bus import with_credentials, without_credentials
from compozy_operator.nats_auth.keys import CalloutKeys


def test_generated_keys_round_trip_through_secret_data():
    keys = CalloutKeys()
    data = keys.secret_data()
    assert keys.issuer.startswith("A") and keys.issuer_seed.startswith("SA")
    assert data["issuer"] == keys.issuer
    assert CalloutKeys.from_secret_data(data) == keys
    assert CalloutKeys() != keys
    # passwords nats.conf reads from the environment as plain strings: a letter, then hex
    for password in (keys.operator_password, keys.state_password, keys.api_password, keys.callout_password,
                     keys.system_password):
        assert password[0].isalpha() and all(c in "0123456789abcdef" for c in password[1:]) and len(password) > 32


@pytest.mark.parametrize(("change", "message"), [
    ({"issuer-seed": ""}, "lacks issuer-seed"),
    ({"operator-password": None}, "lacks operator-password"),
    ({"state-password": None}, "lacks state-password"),
    ({"issuer-seed": "SAnotaseed"}, "issuer-seed is not an account nkey seed"),
    ({"issuer": "AAAA"}, "issuer is not the public key of issuer-seed"),
])
def test_broken_secret_data_is_named(change, message):
    data = {k: v for k, v in {**CalloutKeys().secret_data(), **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message) as e:
        CalloutKeys.from_secret_data(data, "Secret sys/keys")
    assert str(e.value).startswith("Secret sys/keys")


def test_a_user_seed_is_not_an_issuer():
    from compozy_operator.nats_auth.jwt import new_seed
    import nkeys
    data = {**CalloutKeys().secret_data(), "issuer-seed": new_seed(nkeys.PREFIX_BYTE_USER)}
    data.pop("issuer")
    with pytest.raises(ValueError, match="not an account nkey seed"):
        CalloutKeys.from_secret_data(data)


def test_credentials_in_and_out_of_urls():
    assert with_credentials("nats://h:4222", "op", "p w/@") == "nats://op:p%20w%2F%40@h:4222"
    assert with_credentials("tls://old:pw@h:4222", "op", "x") == "tls://op:x@h:4222"
    assert without_credentials("nats://op:secret@h:4222") == "nats://h:4222"
    assert without_credentials("nats://h:4222") == "nats://h:4222"


def test_the_server_conf_names_every_secret_as_a_variable_or_its_value():
    from compozy_operator.nats_auth.keys import SERVER_ENV, server_conf
    keys = CalloutKeys()
    template, filled = server_conf(), server_conf(keys.server_env())
    for env in SERVER_ENV:
        assert f"${env}" in template and f"${env}" not in filled
    for value in keys.server_env().values():
        assert f'"{value}"' in filled and value not in template
    assert "auth_users: [compozy-operator, compozy-state, compozy-api, compozy-callout, compozy-system]" in template
