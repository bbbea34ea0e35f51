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
