// sorat's web UI: copy buttons, and the chat composer that streams a turn from POST /ui/turn.
// Everything the model or a tool wrote goes in as text (textContent); the only HTML inserted is the
// server's own markdown rendering of a finished answer, which never contains raw HTML.
"use strict";

(function () {
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function flash(button, label) {
    const before = button.dataset.label || button.textContent;
    button.dataset.label = before;
    button.textContent = label;
    setTimeout(function () { button.textContent = before; }, 1500);
  }

  async function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return;
    }
    const area = el("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }

  document.addEventListener("click", async function (ev) {
    const button = ev.target.closest("button.copy");
    if (!button) return;
    const source = "copyResult" in button.dataset
      ? [...button.closest(".tool-body").querySelectorAll("pre.out")].pop() // the whole output
      : document.getElementById(button.dataset.copy || "");
    if (!source) return;
    try {
      await copy(source.textContent);
      flash(button, "Copied");
    } catch (e) {
      flash(button, "Copy failed");
    }
  });

  function took(ms) {
    return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(1) + " s";
  }

  function output(ev) {
    const box = document.createDocumentFragment();
    if (!ev.long) {
      box.append(el("pre", "out", ev.output));
      return box;
    }
    box.append(el("pre", "out preview", ev.preview));
    const all = el("details", "show-all");
    all.append(el("summary", "", "Show all (" + ev.output.length.toLocaleString("en") + " characters)"));
    all.append(el("pre", "out", ev.output));
    box.append(all);
    return box;
  }

  // One streamed answer: its text per model round, reasoning, and tool calls as they run.
  class Turn {
    constructor(entry, composer) {
      this.entry = entry;
      this.composer = composer;
      this.text = null; // the element the current round's text streams into
      this.round = -1;
      this.reasoning = null;
      this.calls = new Map();
      this.rounds = new Map(); // round → its text element, replaced by HTML when the round ends
      this.finished = false;
      this.raw = [];
    }

    handle(ev) {
      const handler = this["on_" + ev.type];
      if (handler) handler.call(this, ev);
    }

    on_session(ev) {
      this.composer.dataset.session = ev.id;
      const path = "/ui/chat/" + encodeURIComponent(ev.id);
      if (location.pathname !== path) history.replaceState(null, "", path);
    }

    on_text(ev) {
      if (!this.text || ev.round !== this.round) {
        this.round = ev.round;
        this.text = el("div", "plain streaming");
        this.entry.append(this.text);
        this.rounds.set(ev.round, this.text);
        this.raw.push("");
      }
      this.text.textContent += ev.text;
      this.raw[this.raw.length - 1] += ev.text;
    }

    on_html(ev) {
      const plain = this.rounds.get(ev.round);
      if (!plain) return;
      const md = el("div", "md");
      md.innerHTML = ev.html; // sorat's own markdown rendering: raw HTML in the answer arrives escaped
      plain.replaceWith(md);
      this.rounds.delete(ev.round);
      if (this.text === plain) this.text = null;
    }

    on_reasoning(ev) {
      if (!this.reasoning) {
        this.reasoning = el("details", "reasoning");
        this.reasoning.append(el("summary", "", "Reasoning"), el("div", "plain"));
        this.entry.append(this.reasoning);
      }
      this.reasoning.lastChild.textContent += ev.text;
    }

    on_tool_call(ev) {
      this.text = null;
      this.reasoning = null;
      const box = el("details", "tool running");
      box.dataset.call = ev.id;
      const summary = el("summary");
      summary.append(el("span", "tool-name", ev.name));
      const body = el("div", "tool-body");
      const result = el("h3", "", "Result");
      body.append(el("h3", "", "Arguments"), el("pre", "args", ev.arguments), result);
      const waiting = el("p", "muted", "Running…");
      body.append(waiting);
      box.append(summary, body);
      this.entry.append(box);
      this.calls.set(ev.id, { box: box, summary: summary, result: result, waiting: waiting });
    }

    on_tool_result(ev) {
      const call = this.calls.get(ev.id);
      if (!call) return;
      call.box.classList.remove("running");
      call.summary.append(" ", el("span", "took", took(ev.duration_ms)));
      if (ev.error) {
        call.box.classList.add("failed");
        call.summary.append(" ", el("span", "badge error", "error"));
      }
      call.waiting.replaceWith(output(ev));
      const copyButton = el("button", "copy", "Copy");
      copyButton.type = "button";
      copyButton.dataset.copyResult = "";
      call.result.append(" ", copyButton);
    }

    on_done() {
      this.finished = true;
    }

    on_error(ev) {
      this.finished = true;
      this.entry.append(el("p", "problem", ev.message));
    }

    end() {
      for (const node of this.entry.querySelectorAll(".streaming")) node.classList.remove("streaming");
      for (const call of this.calls.values()) {
        if (call.box.classList.contains("running")) {
          call.box.classList.remove("running");
          call.waiting.textContent = "No result: the run ended before this call finished.";
        }
      }
      const text = this.raw.filter(Boolean).join("\n\n");
      if (text) {
        const id = "raw-live-" + Date.now();
        const raw = el("pre", "raw", text);
        raw.id = id;
        raw.hidden = true;
        const button = el("button", "copy", "Copy");
        button.type = "button";
        button.dataset.copy = id;
        this.entry.querySelector("header").append(button);
        this.entry.append(raw);
      }
    }
  }

  function entry(list, role, label) {
    const item = el("li", "entry " + role);
    const header = el("header");
    header.append(el("span", "role", label));
    item.append(header);
    list.append(item);
    return item;
  }

  function setupComposer(form) {
    const input = form.querySelector("textarea");
    const send = form.querySelector("#send");
    const stop = form.querySelector("#stop");
    const status = form.querySelector("#chat-status");
    const list = document.getElementById("conversation");
    let controller = null;

    function busy(on) {
      send.disabled = on;
      stop.hidden = !on;
      if (on) status.textContent = "sorat is answering…";
    }

    async function errorOf(resp) {
      try {
        const body = await resp.json();
        return body.error.message;
      } catch (e) {
        return "sorat answered " + resp.status;
      }
    }

    async function start() {
      const text = input.value;
      if (!text.trim()) return;
      input.value = "";
      entry(list, "user", "You").append(el("div", "plain", text));
      const turn = new Turn(entry(list, "assistant", "sorat"), form);
      controller = new AbortController();
      busy(true);
      try {
        const resp = await fetch("/ui/turn", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ message: text, session_id: form.dataset.session || null }),
          signal: controller.signal,
          credentials: "same-origin",
        });
        if (!resp.ok) throw new Error(await errorOf(resp));
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 1);
            if (line.trim()) turn.handle(JSON.parse(line));
          }
        }
        status.textContent = turn.finished ? "" : "The answer ended early.";
      } catch (e) {
        if (e.name === "AbortError") {
          status.textContent = "Stopped. What was said so far is kept in the session.";
        } else {
          status.textContent = "";
          turn.on_error({ message: e.message });
        }
      } finally {
        controller = null;
        busy(false);
        if (status.textContent === "sorat is answering…") status.textContent = "";
        turn.end();
        input.focus();
      }
    }

    input.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (!controller) start();
    });
    stop.addEventListener("click", function () {
      if (controller) controller.abort();
    });
    input.focus();
  }

  const composer = document.getElementById("composer");
  if (composer) setupComposer(composer);
})();
