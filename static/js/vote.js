/* deliberate: progressive enhancement of the vote page. No build step, no dependencies.
 *
 * Without this script the page works as plain forms (POST, then redirect back). With it:
 * - a vote is sent as JSON (with the CSRF header) and the next statement is swapped in
 *   without a reload; progress updates; a polite live region announces the new statement;
 * - keyboard shortcuts A (agree), D (disagree), P (pass), ignored while typing;
 * - a character count for the statement text box.
 * On any network or JSON error the form is submitted the ordinary way.
 */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function isTyping(target) {
    if (!target) return false;
    if (target.isContentEditable) return true;
    return /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName);
  }

  function setupVoting() {
    var form = document.getElementById("vote-form");
    if (!form || !window.fetch || !window.JSON) return;
    var area = document.getElementById("vote-area");
    var done = document.getElementById("all-voted");
    var announcer = document.getElementById("vote-announcer");
    var idInput = form.querySelector("[data-statement-id]");
    var textEl = form.querySelector("[data-statement-text]");
    var authorEl = form.querySelector("[data-statement-author]");
    var votedEl = document.querySelector("[data-progress-voted]");
    var totalEl = document.querySelector("[data-progress-total]");
    var bar = document.getElementById("progress-bar");
    var busy = false;

    function announce(message) {
      if (!announcer) return;
      // Clear first so that the same words are announced again.
      announcer.textContent = "";
      window.setTimeout(function () { announcer.textContent = message; }, 50);
    }

    function fallback(value) {
      // Submit the ordinary form; form.submit() sends no button, so add the value.
      var hidden = document.createElement("input");
      hidden.type = "hidden";
      hidden.name = "value";
      hidden.value = value;
      form.appendChild(hidden);
      HTMLFormElement.prototype.submit.call(form);
    }

    function show(data) {
      var progress = data.progress;
      votedEl.textContent = String(progress.voted);
      totalEl.textContent = String(progress.total);
      if (bar) {
        bar.max = Math.max(progress.total, 1);
        bar.value = progress.voted;
        bar.textContent = progress.voted + " of " + progress.total;
      }
      var next = data.next;
      if (next) {
        idInput.value = String(next.id);
        textEl.textContent = next.text; // text, never HTML
        authorEl.textContent = next.author_label;
        // Focus stays on the button pressed, so a keyboard user can vote on at once;
        // the live region reads the new statement to screen reader users.
        announce("Vote recorded. Next statement: " + next.text);
      } else {
        area.hidden = true;
        if (done) {
          done.hidden = false;
          done.focus(); // the buttons are gone: put focus on what replaced them
        }
        announce("Vote recorded. You have voted on every statement.");
      }
    }

    function send(value) {
      busy = true;
      var body = JSON.stringify({
        statement_id: parseInt(idInput.value, 10),
        value: parseInt(value, 10)
      });
      window.fetch(form.getAttribute("data-api"), {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          "Accept": "application/json",
          "X-CSRFToken": csrfToken()
        },
        body: body
      }).then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      }).then(function (data) {
        if (!data || data.recorded !== true || !data.progress) throw new Error("unexpected answer");
        show(data);
        busy = false;
      }).catch(function () {
        fallback(value);
      });
    }

    form.addEventListener("submit", function (event) {
      var submitter = event.submitter;
      if (!submitter || submitter.name !== "value") return; // old browser: submit normally
      event.preventDefault();
      if (!busy) send(submitter.value);
    });

    document.addEventListener("keydown", function (event) {
      if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
      if (isTyping(event.target) || area.hidden) return;
      var key = (event.key || "").toLowerCase();
      if (key !== "a" && key !== "d" && key !== "p") return;
      var button = form.querySelector('button[data-shortcut="' + key + '"]');
      if (!button) return;
      event.preventDefault();
      if (!busy) button.click(); // a click on a submit button submits with it as submitter
    });
  }

  function setupCounters() {
    var fields = document.querySelectorAll("textarea[data-char-counter][maxlength]");
    Array.prototype.forEach.call(fields, function (field) {
      var max = parseInt(field.getAttribute("maxlength"), 10);
      var hint = document.getElementById(field.id + "-hint");
      if (!hint || !max) return;
      function update() {
        var left = max - field.value.length;
        hint.textContent = left >= 0
          ? left + " of " + max + " characters left"
          : (-left) + " characters too many (the limit is " + max + ")";
      }
      field.addEventListener("input", update);
      update();
    });
  }

  setupVoting();
  setupCounters();
})();
