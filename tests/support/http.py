"""An aiohttp client for tests: keeps cookies for IP hosts and does not follow redirects unless asked."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL


class HttpClient:
    """A thin wrapper over one ``aiohttp.ClientSession`` (``.session``) that defaults
    ``allow_redirects`` to ``follow_redirects`` (False unless asked). Wrapping rather than subclassing:
    aiohttp warns about subclasses of ClientSession."""

    def __init__(self, session: aiohttp.ClientSession, *, follow_redirects: bool = False) -> None:
        self.session = session
        self.follow_redirects = follow_redirects

    @property
    def cookie_jar(self) -> aiohttp.abc.AbstractCookieJar:
        return self.session.cookie_jar

    def cookie(self, name: str, url: str | None = None) -> str | None:
        """The value the jar would send for ``name`` (to ``url`` if given), else None."""
        cookies = self.session.cookie_jar.filter_cookies(URL(url)) if url else None
        if cookies is not None:
            morsel = cookies.get(name)
            return morsel.value if morsel is not None else None
        for morsel in self.session.cookie_jar:
            if morsel.key == name:
                return morsel.value
        return None

    def request(self, method: str, url: str | URL, **kwargs: Any) -> Any:
        kwargs.setdefault("allow_redirects", self.follow_redirects)
        return self.session.request(method, url, **kwargs)

    def get(self, url: str | URL, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def head(self, url: str | URL, **kwargs: Any) -> Any:
        return self.request("HEAD", url, **kwargs)

    def options(self, url: str | URL, **kwargs: Any) -> Any:
        return self.request("OPTIONS", url, **kwargs)

    def post(self, url: str | URL, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def put(self, url: str | URL, **kwargs: Any) -> Any:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str | URL, **kwargs: Any) -> Any:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str | URL, **kwargs: Any) -> Any:
        return self.request("DELETE", url, **kwargs)

    def ws_connect(self, url: str | URL, **kwargs: Any) -> Any:
        return self.session.ws_connect(url, **kwargs)

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def new_client(*, cookies: bool = True, follow_redirects: bool = False, **session_kwargs: Any) -> HttpClient:
    """Must be called with an event loop running. ``cookies=False`` keeps no cookies at all."""
    jar: aiohttp.abc.AbstractCookieJar = aiohttp.CookieJar(unsafe=True) if cookies else aiohttp.DummyCookieJar()
    session_kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=60))
    return HttpClient(aiohttp.ClientSession(cookie_jar=jar, **session_kwargs), follow_redirects=follow_redirects)
