"""Event ordering and --events rules (behaviour doc §1.3 rule 8, §1.5, §4.2, §4.7)."""
import pytest

from agent import lifecycle, ruby


class TestExecutionOrder:
    @pytest.mark.parametrize("raw, expected", [
        (None, list(lifecycle.DEFAULT_EVENTS)),
        ("", list(lifecycle.DEFAULT_EVENTS)),
        ("ApplicationStart", ["DownloadBundle", "Install", "ApplicationStart"]),
        ("ApplicationStop", ["DownloadBundle", "Install", "ApplicationStop"]),
        ("ApplicationStop,Install", ["DownloadBundle", "ApplicationStop", "Install"]),
        ("BeforeInstall,DownloadBundle", ["DownloadBundle", "BeforeInstall", "Install"]),
        ("BeforeInstall,DownloadBundle,Install", ["BeforeInstall", "DownloadBundle", "Install"]),
        ("DownloadBundle", ["DownloadBundle", "Install"]),
        ("ApplicationStart,ApplicationStart",
         ["DownloadBundle", "Install", "ApplicationStart", "ApplicationStart"]),
    ])
    def test_agent_examples(self, raw, expected):
        """The verified examples of §1.5 come out in the agent's order."""
        assert lifecycle.execution_order(raw) == expected

    def test_trailing_empty_pieces_dropped_leading_kept(self):
        """Ruby's split keeps a leading empty piece and drops trailing ones."""
        assert lifecycle.split_events(",A,,") == ["", "A"]


class TestOrderValidation:
    def test_new_event_before_download_bundle(self):
        """AfterInstall before DownloadBundle is the agent's first order error."""
        msg = lifecycle.events_order_error("AfterInstall,DownloadBundle")
        assert msg.startswith("The only events that can be specified before DownloadBundle are "
                              "BeforeBlockTraffic,AfterBlockTraffic,ApplicationStop.")
        assert msg.endswith("your specified events: AfterInstall,DownloadBundle")

    def test_new_event_before_install(self):
        """ApplicationStart before Install names the Install rule."""
        msg = lifecycle.events_order_error("ApplicationStart,Install")
        assert "specified before Install are BeforeBlockTraffic,AfterBlockTraffic,ApplicationStop," \
               "DownloadBundle,BeforeInstall." in msg

    def test_valid_orders_pass(self):
        """Previous-revision events may come first."""
        assert lifecycle.events_order_error("ApplicationStop,DownloadBundle,BeforeInstall,Install") is None

    @pytest.mark.parametrize("raw, bad", [("applicationstart", "applicationstart"),
                                          (" ApplicationStart", " ApplicationStart"), (",X", "")])
    def test_not_pascal_case(self, raw, bad):
        """Lower-case, space-prefixed and empty names are rejected; Foo-Bar is not."""
        assert lifecycle.not_pascal_case(raw) == bad
        assert lifecycle.not_pascal_case("Foo-Bar,My_event") is None


class TestRevisionSource:
    def test_previous_revision_events(self):
        """ApplicationStop and the block-traffic hooks come from the last successful revision."""
        for e in ("ApplicationStop", "BeforeBlockTraffic", "AfterBlockTraffic"):
            assert lifecycle.previous_revision_source(e) == lifecycle.LAST_SUCCESSFUL
        assert lifecycle.previous_revision_source("BeforeInstall") == lifecycle.CURRENT
        assert lifecycle.previous_revision_source("MyCustom") == lifecycle.CURRENT

    def test_blue_green_rollback_mapping(self):
        """Blue/green rollbacks take block-traffic hooks from the most recent revision."""
        assert lifecycle.previous_revision_source(
            "BeforeBlockTraffic", rollback_blue_green=True) == lifecycle.MOST_RECENT
        assert lifecycle.previous_revision_source(
            "AfterAllowTraffic", rollback_blue_green=True) == lifecycle.LAST_SUCCESSFUL


class TestInstallChecks:
    def test_unknown_hook_listed_in_ruby_form(self):
        """A hook for an event not run is unknown; the list renders as Ruby's inspect."""
        unknown = lifecycle.unknown_hooks(["BeforeInstall", "AfterInstal"], None)
        assert ruby.inspect_list(unknown) == '["AfterInstal"]'

    def test_custom_event_known_when_in_events(self):
        """--events MyCustomEvent makes the hook known."""
        assert lifecycle.unknown_hooks(["MyCustomEvent"], "MyCustomEvent") == []

    def test_custom_event_missing_from_appspec(self):
        """A custom event absent from the appspec is reported."""
        assert lifecycle.missing_custom_events(["BeforeInstall"], "NotInAppspec") == ["NotInAppspec"]
