"""`AppDependency[T]`: a parameter that receives one of the app-level objects (see `app.components`).

Named like `NamedDependency` (the parameter's name is the dependency's key) and handed over as it is: the
signature model does not validate it, which for a dataclass would mean rebuilding it field by field on every
request."""

from __future__ import annotations

from typing import Annotated, TypeAlias, TypeVar

from litestar.di import Dependency
from litestar.params import SkipValidationMarker

T = TypeVar("T")

AppDependency: TypeAlias = Annotated[T, Dependency(kind="named"), SkipValidationMarker()]
