"""The data-classification step: where a call's data may go, decided before it is sent anywhere.

A call's class is the stricter of its key's and team's class and the `x-meshgate-data-class` header
(which may raise it, never lower it). A route only uses deployments whose hosting the class allows
(router.py); this step refuses, with a 403 that says why, a call for which the model has none at all.
It also hands the route what sticky routing hashes (the user, or the key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from meshgate.control.policy import call_data_class
from meshgate.errors import MeshError
from meshgate.gateway.capabilities import refused
from meshgate.gateway.pipeline import ORDER_AUTHORIZE, Call, Step
from meshgate.routing.router import RouteBase

HEADER = "x-meshgate-data-class"


class DataClassForbidden(MeshError):
    status = 403
    type = "invalid_request_error"
    default_code = "data_class_forbidden"
    kind = "data_class_forbidden"


class DataClassRouting(Step):
    name = "data-class"
    order = ORDER_AUTHORIZE + 50

    def __init__(self, allowed_hosting: Callable[[], Mapping[str, Sequence[str]]]) -> None:
        self.allowed_hosting = allowed_hosting

    async def before(self, call: Call) -> None:
        principal = call.principal
        data_class = call_data_class(principal, call.headers.get(HEADER))
        ctx = call.ctx
        ctx.data_class = data_class
        model = call.model
        if isinstance(model, RouteBase):
            sticky = model.config.sticky
            if sticky == "user":
                ctx.sticky_key = call.request.user or (principal.key_id if principal is not None else None)
            elif sticky == "key" and principal is not None:
                ctx.sticky_key = principal.key_id
        self.enforce(call)

    def enforce(self, call: Call) -> None:
        """Refuse the call when its model has no deployment its data class may reach. The guards
        call this again after their findings raised the class."""
        data_class = call.ctx.data_class
        model = call.model
        assert model is not None
        if isinstance(model, RouteBase):
            if model.allows(data_class):
                return
            where = ", ".join(f"{d.name} ({d.hosting})" for d in model.deployments)
        elif model.hosting in self.allowed_hosting().get(data_class, ()):
            return
        else:
            where = f"{model.name} ({model.hosting})"
        allowed = self.allowed_hosting().get(data_class, ())
        only = " or ".join(allowed) if allowed else "nowhere"
        raise refused(
            call,
            DataClassForbidden(
                f"Data of class `{data_class}` may only go to {only} deployments, and the model "
                f"`{call.model_name}` has none for it (deployments: {where}).",
                param=HEADER if call.headers.get(HEADER) else None,
            ),
        )
