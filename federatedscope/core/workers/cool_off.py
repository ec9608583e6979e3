"""How long an id the transport closed for abuse (``Disconnected.abuse``) must wait before it
may join again: ``CoolOff``. ``Admission`` refuses its re-joins until then, naming the end."""
import time
from dataclasses import dataclass
from typing import Dict, Set

# An abuse close is one an honest client never causes (it sends no invalid message and no
# heartbeat flood), so only abusers pay: without a pause a closed abuser re-joins at once and
# floods again, for ever. Doubling from a short base keeps one mistaken close cheap (the id is
# back in seconds) while a persistent abuser's closes thin out geometrically, up to one an hour.
COOL_OFF_BASE = 5.0        # seconds after the first abuse close of an id
COOL_OFF_CAP = 3600.0      # seconds; the longest period, reached at the 11th close


@dataclass
class Strikes:
    """One client id's abuse closes (kept for the whole job: the count never decays)."""
    closes: int = 0
    until: float = 0.0     # time.monotonic() from which a re-join is allowed again
    why: str = ""          # the last close's reason, as the transport gave it
    refused: int = 0       # re-joins refused in the current period (only the first is logged)


class CoolOff:
    """Which ids are cooling off after an abuse close, and until when (``time.monotonic``)."""

    def __init__(self, base: float = COOL_OFF_BASE, cap: float = COOL_OFF_CAP):
        self.base, self.cap = base, cap
        self.strikes: Dict[int, Strikes] = {}

    def close(self, cid: int, why: str) -> Strikes:
        """Record an abuse close of ``cid``; its re-joins are refused from now until ``until``."""
        s = self.strikes.setdefault(cid, Strikes())
        s.closes += 1
        s.until = time.monotonic() + self.period(s.closes)
        s.why, s.refused = why, 0
        return s

    def period(self, closes: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(closes - 1, 40))

    def cooling(self) -> Set[int]:
        return {c for c in self.strikes if self.left(c) > 0}

    def left(self, cid: int) -> float:
        """Seconds until ``cid`` may re-join (0: it may)."""
        s = self.strikes.get(cid)
        return max(0.0, s.until - time.monotonic()) if s else 0.0


def utc_after(seconds: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + seconds))
