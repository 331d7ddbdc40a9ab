"""Notifications on oslo.messaging: ``volume.attach`` and ``volume.detach``,
each ``.start``, ``.end`` or ``.error``, on the ``notifications`` topic.

Off unless configured, with oslo.messaging's own option (nobody may be
listening, and an unread queue only grows)::

    [oslo_messaging_notifications]
    driver = messagingv2
"""

from __future__ import annotations

import logging
from typing import Any

import oslo_messaging as messaging
from oslo_config import cfg

from tether.context import RequestContext
from tether.messaging import transport as tr

LOG = logging.getLogger(__name__)
TOPIC = "notifications"


class Notifier:
    def __init__(self, conf: cfg.ConfigOpts, publisher: str) -> None:
        self._transport = tr.notification_transport(conf, conf.transport_url)
        self._notifier = messaging.Notifier(self._transport, publisher_id=publisher,
                                            topics=[TOPIC])
        # oslo.messaging calls a notifier with no driver at all "enabled" (it
        # only checks for ['noop']); such a notifier sends nothing anywhere
        self.enabled = (bool(conf.oslo_messaging_notifications.driver)
                        and self._notifier.is_enabled())

    def emit(self, ctx: RequestContext, event_type: str, payload: dict[str, Any],
             error: bool = False) -> None:
        """Publish; a broken notification bus never breaks the operation."""
        if not self.enabled:
            return
        try:
            if error:
                self._notifier.error(ctx.to_dict() | {"auth_token": None}, event_type,
                                     payload)
            else:
                self._notifier.info(ctx.to_dict() | {"auth_token": None}, event_type,
                                    payload)
        except Exception:
            LOG.exception("could not publish %s", event_type)

    def close(self) -> None:
        self._transport.cleanup()
