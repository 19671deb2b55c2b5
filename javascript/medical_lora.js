// medical-lora tab: what Gradio cannot do by itself. Loaded by the WebUI (every file in
// javascript/) and by the standalone app (wrapped in a function and run on page load).
// Confirmation before erasing, copy-to-clipboard, polling the job so a reloaded page
// re-attaches to it, and refreshing the WebUI's Lora cards when an adapter appears or goes.
(function () {
    "use strict";
    if (window.medicalLora) {
        return;
    }
    var POLL_RUNNING_MS = 1000;
    var POLL_IDLE_MS = 10000;
    var refreshedFor = {};

    function root() {
        var apps = document.getElementsByTagName("gradio-app");
        var app = apps.length ? apps[0] : document;
        return app.shadowRoot || app;
    }

    function byId(id) {
        return root().querySelector("#" + id);
    }

    function setInput(containerId, value) {
        var container = byId(containerId);
        var input = container && container.querySelector("textarea, input");
        if (!input) {
            return false;
        }
        input.value = value;
        input.dispatchEvent(new Event("input", {bubbles: true}));
        return true;
    }

    function click(id) {
        var element = byId(id);
        var button = element && (element.tagName === "BUTTON" ? element : element.querySelector("button"));
        if (button) {
            button.click();
        }
        return Boolean(button);
    }

    function tabVisible() {
        var tab = byId("medlora_root") || byId("medlora_tabs");
        return Boolean(tab && tab.offsetParent !== null);
    }

    // The WebUI 1.10 Lora pages refresh through a hidden button per tab
    // (ui_extra_networks.py: "{tabname}_{page}_extra_refresh_internal", clicked the same way by
    // its extraNetworks.js); absent outside the WebUI, so nothing happens standalone.
    function refreshLoraCards() {
        ["txt2img", "img2img"].forEach(function (tabname) {
            var button = byId(tabname + "_lora_extra_refresh_internal");
            if (button) {
                button.dispatchEvent(new Event("click"));
            }
        });
    }

    function jobState() {
        var progress = root().querySelector("#medlora_progress .medlora-progress");
        return progress ? progress.getAttribute("data-state") : null;
    }

    function afterPoll() {
        var result = root().querySelector("#medlora_result .medlora-result");
        var name = result && result.getAttribute("data-adapter");
        if (name && !refreshedFor[name]) {
            refreshedFor[name] = true;
            refreshLoraCards();
        }
    }

    var lastPoll = 0;
    var answerAtPoll = null;
    function lastAnswer() {
        var progress = root().querySelector("#medlora_progress .medlora-progress");
        return progress ? progress.getAttribute("data-polled") : null;
    }
    function poll() {
        var state = jobState();
        var busy = state === "queued" || state === "running";
        var now = Date.now();
        var answered = lastAnswer() !== answerAtPoll;  // the previous poll came back
        var due = lastPoll === 0 || now - lastPoll >= POLL_IDLE_MS || (busy && answered);
        if (tabVisible() && due) {
            lastPoll = now;
            answerAtPoll = lastAnswer();
            click("medlora_poll");
        }
        afterPoll();
        setTimeout(poll, busy ? POLL_RUNNING_MS : POLL_RUNNING_MS * 2);
    }

    function copyText(text) {
        if (navigator.clipboard && window.isSecureContext) {
            return navigator.clipboard.writeText(text);
        }
        var area = document.createElement("textarea");
        area.value = text;
        document.body.appendChild(area);
        area.select();
        document.execCommand("copy");
        document.body.removeChild(area);
        return Promise.resolve();
    }

    function onClick(event) {
        var target = event.composedPath ? event.composedPath()[0] : event.target;
        if (!target || !target.closest) {
            return;
        }
        var remove = target.closest(".medlora-delete");
        if (remove) {
            var name = remove.getAttribute("data-name");
            if (window.confirm("Erase adapter '" + name + "'? Its file, previews and training data are deleted " +
                               "and it is removed from every list. This cannot be undone.")) {
                setInput("medlora_delete_name", name);
                setTimeout(function () {
                    click("medlora_delete_button");
                    setTimeout(refreshLoraCards, 3000);
                }, 50);
            }
            return;
        }
        var copy = target.closest(".medlora-copy");
        if (copy) {
            copyText(copy.getAttribute("data-copy")).then(function () {
                copy.textContent = "Copied";
                setTimeout(function () { copy.textContent = "Copy"; }, 1500);
            });
            return;
        }
        var forget = target.closest("#medlora_forget");
        if (forget) {
            if (!window.confirm("Erase every adapter and dataset made from this patient's images? " +
                                "This cannot be undone.")) {
                event.stopImmediatePropagation();
                event.preventDefault();
            }
            return;
        }
        var tabButton = target.closest("#medlora_tabs .tab-nav button");
        if (tabButton) {
            var refresh = {"Adapters": "medlora_adapters_refresh", "Audit": "medlora_audit_refresh"}[tabButton.textContent.trim()];
            if (refresh) {
                setTimeout(function () { click(refresh); }, 100);
            }
        }
    }

    window.medicalLora = {refreshLoraCards: refreshLoraCards, poll: poll};
    document.addEventListener("click", onClick, true);
    setTimeout(poll, 500);
})();
