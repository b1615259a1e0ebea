"""The contact policy: how often a client may be approached, and what they said no to.

After a client declines a product, it is not offered again for `decline_days`; a client
gets at most `max_offers` offers in any rolling `window_days`. Pure: the caller supplies
the client's recent history (from the event store) and gets back how many offers may
still be made and which products are suppressed, each with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContactPolicy:
    decline_days: int = 30
    max_offers: int = 6
    window_days: int = 7

    @property
    def enabled(self) -> bool:
        return self.decline_days > 0 or self.max_offers > 0

    def apply(self, offers_made: int, declined: set[str],
              product_ids: list[str]) -> tuple[int | None, dict[int, str]]:  # fmt: skip
        """(offers still allowed, None = no cap; {product index: reason} suppressed)."""
        blocked: dict[int, str] = {}
        allowed: int | None = None
        if self.max_offers > 0:
            allowed = max(0, self.max_offers - offers_made)
            if allowed == 0:
                why = (
                    f"contact policy: {offers_made} offers made to this client in the last "
                    f"{self.window_days} days (limit {self.max_offers})"
                )
                return 0, dict.fromkeys(range(len(product_ids)), why)
        if self.decline_days > 0:
            for index, product in enumerate(product_ids):
                if product in declined:
                    blocked[index] = (
                        f"contact policy: declined by this client within the last "
                        f"{self.decline_days} days"
                    )
        return allowed, blocked
