// The security console's only script: the live decisions (server-sent events) and
// refreshing the flags, denials and top-employees panels. No framework, no network
// beyond the console itself. Event data is put in the page as text, never as markup.
"use strict";

(function () {
  const base = "/-/console";
  const maxRows = 50;

  function refresh(name) {
    const target = document.getElementById(name);
    if (!target) return;
    fetch(base + "/fragment/" + name, { credentials: "same-origin" })
      .then(function (answer) { return answer.ok ? answer.text() : null; })
      .then(function (markup) { if (markup !== null) target.innerHTML = markup; })
      .catch(function () {});
  }

  function addDecision(data) {
    const body = document.querySelector("#live-table tbody");
    if (!body) return;
    const row = document.createElement("tr");
    row.className = data.verdict === "allow" ? "allow" : "deny";
    data.cells.forEach(function (value, index) {
      const cell = document.createElement("td");
      if (index === 1 && value) {
        const link = document.createElement("a");
        link.href = base + "/employee/" + encodeURIComponent(value);
        link.textContent = value;
        cell.appendChild(link);
      } else {
        cell.textContent = value;
      }
      row.appendChild(cell);
    });
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > maxRows) body.deleteRow(body.rows.length - 1);
  }

  let panelsDue = null;
  function refreshPanelsSoon() {
    // decisions arrive by the hundred: the summary panels follow at most every 2 s
    if (panelsDue !== null) return;
    panelsDue = setTimeout(function () { panelsDue = null; refresh("denials"); refresh("top"); }, 2000);
  }

  function live() {
    const state = document.getElementById("live-state");
    const source = new EventSource(base + "/events");
    source.onopen = function () { if (state) state.textContent = "live"; };
    source.onerror = function () { if (state) state.textContent = "reconnecting…"; };
    source.addEventListener("decision", function (message) {
      addDecision(JSON.parse(message.data));
      refreshPanelsSoon();
    });
    source.addEventListener("signal", function () { refresh("flags"); });
    source.addEventListener("console", function () { refresh("flags"); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.body.dataset.page !== "overview") return;
    live();
    setInterval(function () { refresh("flags"); }, 5000);
  });
})();
