// sso-sidecar settings page: progressive enhancement only. Everything works without it.
"use strict";
(function () {
  // Copy buttons copy the text of the element their data-copy names, and say so.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      var status = button.parentElement.querySelector(".copied");
      if (!source) { return; }
      var text = source.textContent;
      var done = function () { if (status) { status.textContent = "Copied to the clipboard."; } };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(text).then(done, function () { select(source); });
      } else {
        select(source);
      }
    });
  });
  function select(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // A Test login ends in another window: its result page tells this one, which shows it without a reload.
  // Only text crosses (never markup), and only for the draft this page shows: any script of this origin could
  // post on the channel, and the server decides Enable by what it stored, not by what a page shows.
  var channel = "BroadcastChannel" in window ? new BroadcastChannel("sso-sidecar-admin") : null;
  var outcome = document.getElementById("test-outcome");
  if (channel && outcome) {
    var row = function (name) {
      var element = outcome.querySelector("[data-row=" + name + "]");
      return element ? element.textContent : "";
    };
    channel.postMessage({
      kind: "test-finished",
      digest: outcome.getAttribute("data-digest"),
      state: row("test-state"),
      result: row("test-result"),
    });
  }
  var facts = document.getElementById("test-facts");
  var live = document.getElementById("test-live");
  if (channel && facts && live) {
    live.textContent = "The result of a Test login in the other window shows here by itself.";
    channel.addEventListener("message", function (event) {
      var data = event.data || {};
      if (data.kind !== "test-finished" || data.digest !== facts.getAttribute("data-digest")) { return; }
      var state = document.getElementById("test-state");
      var result = document.getElementById("test-result");
      if (state) { state.textContent = String(data.state); }
      if (result) { result.textContent = String(data.result); }
      if (live) { live.textContent = "The Test login in the other window finished: see above."; }
    });
  }

  // Presets fill in the Issuer URL field at once (without a round trip); the server does the same
  // for a browser without scripts.
  var presets = document.querySelector("form.presets");
  var issuer = document.getElementById("issuer_url");
  if (!presets || !issuer) { return; }
  var choice = document.getElementById("preset");
  var name = document.getElementById("preset-name");
  var server = document.getElementById("preset-server");
  var serverField = document.querySelector("[data-preset-only=keycloak]");
  function showServer() {
    if (serverField) { serverField.hidden = choice.value !== "keycloak"; }
  }
  choice.addEventListener("change", showServer);
  showServer();
  var valid = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252}[A-Za-z0-9])?$/;
  presets.addEventListener("submit", function (event) {
    var value = name.value.trim();
    var url = null;
    if (choice.value === "google") {
      return; // needs a check of the config (access.allowed_email_domains): the server answers
    }
    if (!valid.test(value)) { return; } // the server explains what is missing
    if (choice.value === "okta") {
      url = "https://" + (value.indexOf(".") >= 0 ? value : value + ".okta.com") + "/oauth2/default";
    } else if (choice.value === "entra") {
      url = "https://login.microsoftonline.com/" + value + "/v2.0";
    } else if (choice.value === "keycloak") {
      var base = server.value.trim().replace(/\/+$/, "");
      if (!/^https?:\/\/[^\/]+/.test(base)) { return; }
      url = base + "/realms/" + value;
    }
    if (url) {
      event.preventDefault();
      issuer.value = url;
      issuer.focus();
    }
  });
})();
