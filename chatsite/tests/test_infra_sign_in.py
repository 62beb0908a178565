"""Sign-in with Entra ID in infra/, evaluated as azd provisions it: off by default,
and then off at the ingress too; switched on by ENABLE_ENTRA_AUTH, the ingress's
authentication for one tenant in front of an app that trusts its principal headers,
the client secret a Container Apps secret of the app alone, and the health paths
excluded for probes.

The resource bodies themselves are checked against Azure's type definitions by
test_infra_types."""

from typing import Any

import pytest

from chatsite.tests.test_infra_types import (
    AZD_ENVIRONMENT,
    Node,
    Template,
    Unknown,
    field,
    provision,
)

pytestmark = pytest.mark.deploy

CLIENT_ID = "8f6c3e1a-1b2c-4d5e-9f00-0123456789ab"
TENANT_ID = "4a3c1f7e-5b2d-4e8f-9a06-c1d2e3f40516"
STAFF = "0f5e6a3b-7c2d-4e1f-8a9b-1c2d3e4f5a6b,9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
SIGN_IN = {
    "ENABLE_ENTRA_AUTH": "true",
    "ENTRA_CLIENT_ID": CLIENT_ID,
    "ENTRA_CLIENT_SECRET": "client-secret-from-the-app-registration",
    "ENTRA_TENANT_ID": TENANT_ID,
    "ENTRA_STAFF_GROUPS": STAFF,
}


def web_app(environment: dict[str, str]) -> Template:
    main, _ = provision(AZD_ENVIRONMENT | environment)
    return main.module("web")


def known(web: Template, node: Node | None) -> Any:
    try:
        return web.evaluate(node)
    except Unknown:
        return Unknown


def app_environment(web: Template) -> dict[str, Any]:
    """The web container's variables: a value, or the secret it refers to."""
    (container,) = web.items(
        web.member(web.resource("app")["body"], "properties", "template", "containers")
    )
    found = {}
    for variable in web.items(web.member(container, "env")):
        name = web.evaluate(field(variable, "name"))
        secret = field(variable, "secretRef")
        found[name] = (
            ("secret", web.evaluate(secret))
            if secret
            else known(web, field(variable, "value"))
        )
    return found


def secrets(web: Template, symbol: str) -> dict[str, Any]:
    body = web.resource(symbol)["body"]
    listed = web.member(body, "properties", "configuration", "secrets")
    return {
        web.evaluate(field(secret, "name")): known(web, field(secret, "value"))
        for secret in web.items(listed)
    }


def test_it_is_off_unless_switched_on() -> None:
    web = web_app({})
    # Deployed disabled, so that switching it off switches the ingress's off too.
    properties = web.member(web.resource("authConfig")["body"], "properties")
    assert web.evaluate(properties) == {"platform": {"enabled": False}}
    variables = app_environment(web)
    assert "AUTH_EASY_AUTH" not in variables
    assert variables["CHAT_REQUIRE_LOGIN"] == "0"
    assert not any("authentication" in name for name in secrets(web, "app"))


def test_the_ingress_signs_in_one_tenant_for_an_app_that_trusts_it() -> None:
    web = web_app(SIGN_IN)
    record = web.resource("authConfig")
    assert web.evaluate(field(record["body"], "name")) == "current"
    properties = web.member(record["body"], "properties")
    assert web.evaluate(web.member(properties, "platform", "enabled")) is True
    entra = web.member(properties, "identityProviders", "azureActiveDirectory")
    registration = web.member(entra, "registration")
    assert web.evaluate(field(registration, "clientId")) == CLIENT_ID
    # The cloud's login endpoint, the tenant, /v2.0: that tenant's issuer.
    cloud, tenant, version = field(registration, "openIdIssuer")["interp"]
    assert known(web, cloud) is Unknown
    assert (known(web, tenant), version) == (TENANT_ID, "/v2.0")
    # Anonymous requests reach the app, which answers them itself.
    validation = web.member(properties, "globalValidation")
    action = field(validation, "unauthenticatedClientAction")
    assert web.evaluate(action) == "AllowAnonymous"
    assert web.evaluate(web.member(properties, "httpSettings", "requireHttps"))

    variables = app_environment(web)
    assert variables["AUTH_EASY_AUTH"] == "1"
    assert variables["AUTH_EASY_AUTH_TENANT_ID"] == TENANT_ID
    assert variables["AUTH_EASY_AUTH_STAFF_GROUPS"] == STAFF
    assert variables["AUTH_EASY_AUTH_SUPERUSER_GROUPS"] == ""
    assert variables["CHAT_REQUIRE_LOGIN"] == "1"


def test_the_client_secret_is_a_secret_of_the_app_alone() -> None:
    web = web_app(SIGN_IN)
    registration = web.member(
        web.resource("authConfig")["body"],
        "properties",
        "identityProviders",
        "azureActiveDirectory",
        "registration",
    )
    name = web.evaluate(field(registration, "clientSecretSettingName"))
    assert secrets(web, "app")[name] == SIGN_IN["ENTRA_CLIENT_SECRET"]
    assert name not in secrets(web, "migrateJob")
    assert SIGN_IN["ENTRA_CLIENT_SECRET"] not in app_environment(web).values()


def test_probes_and_uptime_checks_need_no_sign_in() -> None:
    web = web_app(SIGN_IN)
    validation = web.member(
        web.resource("authConfig")["body"], "properties", "globalValidation"
    )
    excluded = set(web.evaluate(field(validation, "excludedPaths")))
    (container,) = web.items(
        web.member(web.resource("app")["body"], "properties", "template", "containers")
    )
    probed = {
        web.evaluate(web.member(probe, "httpGet", "path"))
        for probe in web.items(web.member(container, "probes"))
    }
    assert probed <= excluded


def test_sign_in_can_be_optional() -> None:
    web = web_app(SIGN_IN | {"CHAT_REQUIRE_LOGIN": "false"})
    variables = app_environment(web)
    assert variables["AUTH_EASY_AUTH"] == "1"
    assert variables["CHAT_REQUIRE_LOGIN"] == "0"


def test_the_tenant_defaults_to_the_one_deployed_to() -> None:
    environment = {k: v for k, v in SIGN_IN.items() if k != "ENTRA_TENANT_ID"}
    main, _ = provision(AZD_ENVIRONMENT | environment)
    web = main.outline["modules"]["web"]
    tenant = main.resolve(main.member(web["body"], "params", "entraTenantId"))
    assert tenant == {
        "op": "property",
        "args": [{"call": "tenant", "args": []}, "tenantId"],
    }
