"""Principal headers as the Container Apps ingress sends them after an Entra ID
sign-in.

The layout follows Microsoft's documentation of X-MS-CLIENT-PRINCIPAL ("Work with
user identities in Azure App Service authentication", the same module Container
Apps runs): base64 of JSON with `auth_typ`, `claims` as `{typ, val}` pairs (a
claim with several values, such as `groups`, repeats), `name_typ` and `role_typ`.
Claim types are the ones the module maps ID token claims to: the object and
tenant ids and the names under their long URIs, `groups`, `roles`, `name` and
`preferred_username` as they are.
"""

import base64
import json
import uuid
from typing import Any

TENANT_ID = "4a3c1f7e-5b2d-4e8f-9a06-c1d2e3f40516"
NAME_TYPE = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
ROLE_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
OBJECT_ID = "http://schemas.microsoft.com/identity/claims/objectidentifier"
TENANT = "http://schemas.microsoft.com/identity/claims/tenantid"
EMAIL = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
GIVEN_NAME = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname"
SURNAME = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname"
SUBJECT = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier"


def claims(
    object_id: str,
    *,
    email: str = "ada@contoso.example",
    name: str = "Ada Lovelace",
    given_name: str | None = "Ada",
    surname: str | None = "Lovelace",
    tenant_id: str = TENANT_ID,
    groups: tuple[str, ...] = (),
    roles: tuple[str, ...] = (),
) -> list[dict[str, str]]:
    """The claims of an ID token as Easy Auth passes them on, with the token's
    bookkeeping claims (issuer, audience, times) that the app ignores."""
    found = [
        {"typ": "aud", "val": "8f6c3e1a-1b2c-4d5e-9f00-0123456789ab"},
        {"typ": "iss", "val": f"https://login.microsoftonline.com/{tenant_id}/v2.0"},
        {"typ": "iat", "val": "1735689600"},
        {"typ": "nbf", "val": "1735689600"},
        {"typ": "exp", "val": "1735693500"},
        {"typ": "aio", "val": "AWQAm/8YAAAA"},
        {"typ": EMAIL, "val": email},
    ]
    if given_name is not None:
        found.append({"typ": GIVEN_NAME, "val": given_name})
    if surname is not None:
        found.append({"typ": SURNAME, "val": surname})
    found += [{"typ": "groups", "val": group} for group in groups]
    found += [
        {"typ": "name", "val": name},
        {"typ": OBJECT_ID, "val": object_id},
        {"typ": "preferred_username", "val": email},
        {"typ": "rh", "val": "0.AXQAv4j5cvGGr0GRqy180BHbRw."},
    ]
    found += [{"typ": "roles", "val": role} for role in roles]
    found += [
        {"typ": SUBJECT, "val": "pDwb4bn0XY1Y0mNQ1dzbbUrd6aqo2bQH7A5_qQpjxKM"},
        {"typ": TENANT, "val": tenant_id},
        {"typ": "uti", "val": "kNsbAGNWnkCJRTvkRkxXAA"},
        {"typ": "ver", "val": "2.0"},
    ]
    return found


def encode(payload: Any) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


def principal_headers(object_id: str | None = None, **kwargs: Any) -> dict[str, str]:
    """The four headers of a signed-in request (`claims` takes the keywords)."""
    object_id = object_id or str(uuid.uuid4())
    found = claims(object_id, **kwargs)
    email = next(claim["val"] for claim in found if claim["typ"] == EMAIL)
    payload = {
        "auth_typ": "aad",
        "claims": found,
        "name_typ": NAME_TYPE,
        "role_typ": ROLE_TYPE,
    }
    return {
        "X-MS-CLIENT-PRINCIPAL": encode(payload),
        "X-MS-CLIENT-PRINCIPAL-ID": object_id,
        "X-MS-CLIENT-PRINCIPAL-NAME": email,
        "X-MS-CLIENT-PRINCIPAL-IDP": "aad",
    }
