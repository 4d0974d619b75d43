"""/docs and /redoc load nothing from the internet: their assets come from the gateway."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_docs_and_redoc_reference_only_assets_the_gateway_serves(gateway: TestClient) -> None:
    for page, assets in (("/docs", 2), ("/redoc", 1)):
        html = gateway.get(page)
        assert html.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html.text)
        assert len(urls) == assets, urls
        for url in urls:
            assert url.startswith("/static-offline-docs/"), url  # never https://cdn...
            asset = gateway.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100_000, url
        assert not re.search(r'(?:src|href)="(?:https?:)?//', html.text)  # nothing off-host
    schema = gateway.get("/openapi.json")
    assert schema.json()["paths"]["/events"]["post"]
    # every $ref resolves: one dangling reference and ReDoc shows only an error
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', schema.text))
    assert {"EventList", "AssetList"} <= refs
    assert refs <= set(schema.json()["components"]["schemas"])
