// The operator page's script (served as /page.js under a CSP that allows only this origin).
// Every value from the server is rendered with textContent, never as markup: a user agent
// is chosen by whoever sent the request.
"use strict";

(function () {
  // The admin token lives in this variable only: no cookie, no storage.
  let token = "";
  // The user whose devices are shown, to refresh the list after an action.
  let shownUser = "";

  const $ = (id) => document.getElementById(id);

  function say(message, isError) {
    const status = $("status");
    status.textContent = message;
    status.className = isError ? "error" : "";
  }

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  // ---- counters, from /metrics (Prometheus text; not authenticated) ----

  function parseMetrics(text) {
    const m = { created: 0, destroyed: {}, requests: 0, errors: 0, inFlight: 0, connections: 0 };
    for (const line of text.split("\n")) {
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)/.exec(line);
      if (!match) {
        continue;
      }
      const name = match[1];
      const labels = match[3] || "";
      const value = Number(match[4]);
      if (!Number.isFinite(value)) {
        continue;
      }
      const label = (key) => {
        const l = new RegExp("(?:^|,)" + key + "=\"([^\"]*)\"").exec(labels);
        return l ? l[1] : "";
      };
      if (name === "sessiongate_sessions_created_total") {
        m.created = value;
      } else if (name === "sessiongate_sessions_destroyed_total") {
        m.destroyed[label("reason")] = value;
      } else if (name === "sessiongate_requests_total") {
        m.requests += value;
        if (label("status").startsWith("5")) {
          m.errors += value;
        }
      } else if (name === "sessiongate_in_flight_requests") {
        m.inFlight = value;
      } else if (name === "sessiongate_client_connections") {
        m.connections = value;
      }
    }
    return m;
  }

  async function refreshMetrics() {
    let text;
    try {
      const res = await fetch("/metrics", { cache: "no-store", credentials: "omit" });
      if (!res.ok) {
        throw new Error("status " + res.status);
      }
      text = await res.text();
    } catch (e) {
      $("metrics-age").textContent = "(metrics unavailable: " + e.message + ")";
      return;
    }
    const m = parseMetrics(text);
    const reasons = Object.keys(m.destroyed).sort();
    const destroyed = reasons.reduce((sum, r) => sum + m.destroyed[r], 0);
    $("m-created").textContent = m.created.toLocaleString();
    $("m-destroyed").textContent = destroyed.toLocaleString();
    $("m-destroyed-by").textContent = reasons
      .filter((r) => m.destroyed[r] > 0)
      .map((r) => r + " " + m.destroyed[r].toLocaleString())
      .join(" · ");
    $("m-requests").textContent = m.requests.toLocaleString();
    $("m-requests-by").textContent = m.errors > 0 ? m.errors.toLocaleString() + " answered 5xx" : "";
    $("m-in-flight").textContent = m.inFlight.toLocaleString();
    $("m-connections").textContent = m.connections.toLocaleString();
    $("metrics-age").textContent = "(as of " + new Date().toLocaleTimeString() + ")";
  }

  // ---- the admin API ----

  async function api(method, path) {
    const res = await fetch(path, {
      method: method,
      headers: { Authorization: "Bearer " + token },
      cache: "no-store",
      credentials: "omit",
    });
    if (res.status === 401) {
      forgetToken();
      throw new Error("the admin token was refused; enter it again");
    }
    if (!res.ok) {
      const line = (await res.text()).trim();
      throw new Error(res.status + ": " + line);
    }
    return res.json();
  }

  function when(unixSeconds) {
    return new Date(unixSeconds * 1000).toLocaleString(undefined, {
      dateStyle: "medium",
      timeStyle: "short",
    });
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) {
      td.className = className;
    }
    return td;
  }

  function render(list) {
    $("result-title").textContent = list.user + ": " + plural(list.sessions.length, "active session", "active sessions");
    const body = $("devices").tBodies[0];
    body.replaceChildren();
    for (const s of list.sessions) {
      const row = document.createElement("tr");
      row.dataset.handle = s.handle;
      row.append(
        cell(s.user_agent || "(no user agent)", "ua"),
        cell(when(s.created), "when"),
        cell(when(s.last_seen), "when"),
        cell(s.ip, "ip"),
        cell(s.handle, "handle"),
      );
      const action = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "danger sign-out";
      button.textContent = "Sign out";
      button.dataset.handle = s.handle;
      button.addEventListener("click", () => signOut(button, s.handle));
      action.append(button);
      row.append(action);
      body.append(row);
    }
    $("devices").hidden = list.sessions.length === 0;
    $("no-devices").hidden = list.sessions.length !== 0;
    $("sign-out-everywhere").disabled = list.sessions.length === 0;
    $("result").hidden = false;
  }

  async function showDevices(user) {
    const list = await api("GET", "/sessions?user=" + encodeURIComponent(user));
    shownUser = user;
    render(list);
  }

  async function signOut(button, handle) {
    button.disabled = true;
    try {
      const r = await api("DELETE", "/sessions/" + encodeURIComponent(handle));
      say("Signed out " + plural(r.destroyed, "device", "devices") + ".");
    } catch (e) {
      say("Sign-out failed: " + e.message, true);
    }
    await afterAction();
  }

  async function signOutEverywhere() {
    const user = shownUser;
    try {
      const r = await api("DELETE", "/sessions?user=" + encodeURIComponent(user));
      say("Signed " + user + " out everywhere: " + plural(r.destroyed, "session", "sessions") + " ended.");
    } catch (e) {
      say("Sign-out failed: " + e.message, true);
    }
    await afterAction();
  }

  async function afterAction() {
    if (token && shownUser) {
      try {
        await showDevices(shownUser);
      } catch (e) {
        say(e.message, true);
      }
    }
    await refreshMetrics();
  }

  function forgetToken() {
    token = "";
    shownUser = "";
    $("users").hidden = true;
    $("result").hidden = true;
    $("token-form").hidden = false;
    $("token").focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      token = $("token").value;
      $("token").value = "";
      $("token-form").hidden = true;
      $("users").hidden = false;
      say("");
      $("user").focus();
    });
    $("search-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const user = $("user").value;
      say("");
      try {
        await showDevices(user);
      } catch (e) {
        say(e.message, true);
      }
    });
    $("sign-out-everywhere").addEventListener("click", signOutEverywhere);
    $("forget-token").addEventListener("click", () => {
      forgetToken();
      say("Token forgotten.");
    });
    refreshMetrics();
    setInterval(refreshMetrics, 5000);
  });
})();
