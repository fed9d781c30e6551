"""The experimenter's console: a Tk window of its own, in a process of its own (see viewer.console_link).

It shows who is in the session and where they are (participant, session, step k of N, stimulus and
scene, time on the stimulus, the last answer and that it was committed, frame and pose rates, dropped
frames, the eye tracker or that there is none, the last validation's measures), an opt-in mirror of the
participant's view, and the controls, each with a key:

* **Pause** (P): the participant sees the protocol's "paused" panel; a stimulus interrupted by it is shown
  again from its start.
* **Resume** (R): after a "ready?" panel, the session goes on.
* **Break now** (B): a break before the next trial (at once if a stimulus is showing).
* **Abort…** (A): asks for a reason and whether the session can be resumed or is withdrawn.
* **Repeat validation** (V) and **Go on** (G): after a validation the protocol's threshold calls
  "recalibrate", repeat it (once the eye tracker is recalibrated) or keep the result.
* **Mirror** (M): shows one eye of what the participant sees, a few times per second.

Closing the window asks whether to stop the session (it can be resumed).
"""

from __future__ import annotations

import multiprocessing
import queue
import tkinter as tk
from multiprocessing.shared_memory import SharedMemory
from tkinter import messagebox, ttk

from viewer.console_link import read_mirror

_POLL_MS = 100
#: The mirror's switch says its state in words: the theme's tick box is small.
MIRROR_OFF = "Mirror the participant's view (M): off"
MIRROR_ON = "Mirror the participant's view (M): ON"


class Console:
    """The window; ``status`` brings dictionaries from the session, ``commands`` takes the controls."""

    def __init__(self, root: tk.Tk, status, commands, memory: SharedMemory):
        self.root, self.status, self.commands, self.memory = root, status, commands, memory
        self.seen_mirror = 0
        self.state = "starting"
        self.participant: str | None = None
        root.title(root.title())
        root.protocol("WM_DELETE_WINDOW", self.on_close)
        frame = ttk.Frame(root, padding=12)
        frame.grid(sticky="nsew")
        root.columnconfigure(0, weight=1)
        self.vars = {name: tk.StringVar(value="") for name in ("who", "state", "hint", "step", "stimulus", "answer", "rates",
                                                                 "gaze", "validation", "note")}
        big = ("TkDefaultFont", 14, "bold")
        ttk.Label(frame, textvariable=self.vars["who"], font=big).grid(row=0, column=0, columnspan=4, sticky="w")
        self.state_label = tk.Label(frame, textvariable=self.vars["state"], font=("TkDefaultFont", 18, "bold"),
                                    fg="white", bg="#2a7a2a", padx=10, pady=4)
        self.state_label.grid(row=1, column=0, columnspan=4, sticky="ew", pady=(6, 6))
        # the controls sit right under the state, above every line that may wrap, so they never move
        self.buttons = {}
        for column, (name, label) in enumerate((("pause", "Pause (P)"), ("resume", "Resume (R)"),
                                                ("break", "Break now (B)"), ("abort", "Abort… (A)"))):
            button = ttk.Button(frame, text=label, command=lambda n=name: self.control(n))
            button.grid(row=2, column=column, sticky="ew", padx=3, pady=(0, 4))
            frame.columnconfigure(column, weight=1)
            self.buttons[name] = button
        for column, (name, label) in enumerate((("repeat_validation", "Repeat validation (V)"),
                                                ("accept_validation", "Go on (G)")), start=0):
            button = ttk.Button(frame, text=label, command=lambda n=name: self.control(n))
            button.grid(row=3, column=2 * column, columnspan=2, sticky="ew", padx=3, pady=(0, 8))
            self.buttons[name] = button
        ttk.Label(frame, textvariable=self.vars["hint"], wraplength=640, justify="left",
                  font=("TkDefaultFont", 11, "bold")).grid(row=4, column=0, columnspan=4, sticky="w", pady=(0, 6))
        for row, name in enumerate(("step", "stimulus", "answer", "rates", "gaze", "validation", "note"), start=5):
            ttk.Label(frame, textvariable=self.vars[name], wraplength=640, justify="left").grid(
                row=row, column=0, columnspan=4, sticky="w", pady=1)
        self.mirror_on = tk.BooleanVar(value=False)
        self.mirror_text = tk.StringVar(value=MIRROR_OFF)
        ttk.Checkbutton(frame, textvariable=self.mirror_text, variable=self.mirror_on,
                        command=self.send_mirror).grid(row=12, column=0, columnspan=4, sticky="w", pady=4)
        self.mirror_label = ttk.Label(frame)
        self.mirror_label.grid(row=13, column=0, columnspan=4)
        self.log = tk.Text(frame, height=7, width=84, state="disabled", relief="flat", background="#f2f2f2")
        self.log.grid(row=14, column=0, columnspan=4, sticky="ew", pady=(6, 0))
        self.logged = 0
        for key, name in (("p", "pause"), ("r", "resume"), ("b", "break"), ("a", "abort"), ("v", "repeat_validation"),
                          ("g", "accept_validation")):
            root.bind(f"<KeyPress-{key}>", lambda event, n=name: self.control(n))
        root.bind("<KeyPress-m>", lambda event: (self.mirror_on.set(not self.mirror_on.get()), self.send_mirror()))
        self.photo = None
        root.after(_POLL_MS, self.poll)

    # -- controls ----------------------------------------------------------------------------------------

    def control(self, name: str) -> None:
        # the session ignores a control that does not fit its state; the buttons only show which do
        if name == "abort":
            self.ask_abort()
            return
        self.commands.put({"command": name})

    def send_mirror(self) -> None:
        self.commands.put({"command": "mirror", "on": bool(self.mirror_on.get())})
        self.mirror_text.set(MIRROR_ON if self.mirror_on.get() else MIRROR_OFF)
        if not self.mirror_on.get():
            self.mirror_label.configure(image="")
            self.photo = None

    def ask_abort(self) -> None:
        dialog = tk.Toplevel(self.root)
        dialog.title("Abort the session")
        dialog.transient(self.root)
        body = ttk.Frame(dialog, padding=12)
        body.grid()
        ttk.Label(body, text="Why is the session stopped? (kept in the study's event log)").grid(row=0, column=0, sticky="w")
        reason = ttk.Entry(body, width=60)
        reason.grid(row=1, column=0, sticky="ew", pady=4)
        outcome = tk.StringVar(value="resumable")
        ttk.Radiobutton(body, text="Resumable: continue later with 'panostudy session resume'", value="resumable",
                        variable=outcome).grid(row=2, column=0, sticky="w")
        ttk.Radiobutton(body, text="Withdrawn: the participant stops for good (what was recorded is kept)",
                        value="withdrawn", variable=outcome).grid(row=3, column=0, sticky="w")
        warning = ttk.Label(body, text="", foreground="#a00")
        warning.grid(row=4, column=0, sticky="w")

        def done(_event=None):
            text = reason.get().strip()
            if not text:
                warning.configure(text="Give a reason first.")
                return
            self.commands.put({"command": "abort", "reason": text, "outcome": outcome.get()})
            dialog.destroy()

        buttons = ttk.Frame(body)
        buttons.grid(row=5, column=0, sticky="e", pady=(8, 0))
        ttk.Button(buttons, text="Cancel", command=dialog.destroy).grid(row=0, column=0, padx=4)
        ttk.Button(buttons, text="Stop the session", command=done).grid(row=0, column=1)
        dialog.bind("<Return>", done)
        dialog.bind("<Escape>", lambda event: dialog.destroy())
        # "1"/"2" pick the outcome without the mouse (Alt would reach the window manager)
        dialog.bind("<Control-KeyPress-1>", lambda event: outcome.set("resumable"))
        dialog.bind("<Control-KeyPress-2>", lambda event: outcome.set("withdrawn"))
        reason.focus_set()

    def on_close(self) -> None:
        if self.state in ("complete", "closing", "lost"):
            self.root.destroy()
            return
        if messagebox.askyesno("Stop the session?", "Closing the console stops the session. It can be resumed "
                               "with 'panostudy session resume'. Stop it now?", parent=self.root):
            self.commands.put({"command": "abort", "reason": "console window closed", "outcome": "resumable"})

    # -- status ------------------------------------------------------------------------------------------

    def poll(self) -> None:
        if self.state == "lost":
            return
        session = multiprocessing.parent_process()
        if session is not None and not session.is_alive():
            self.show_lost()
            return
        latest = None
        try:
            while True:
                latest = self.status.get_nowait()
        except queue.Empty:
            pass
        if latest is not None:
            if latest.get("closing"):
                self.root.destroy()
                return
            self.show(latest)
        if self.mirror_on.get():
            self.seen_mirror, image = read_mirror(self.memory, self.seen_mirror)
            if image is not None:
                height, width = image.shape[:2]
                ppm = f"P6 {width} {height} 255 ".encode() + image.tobytes()
                self.photo = tk.PhotoImage(data=ppm, format="PPM")
                self.mirror_label.configure(image=self.photo)
        self.root.after(_POLL_MS, self.poll)

    def show_lost(self) -> None:
        """The session's process ended without closing the console (killed, crashed, power): say so, and
        leave no control that would seem to work."""
        self.state = "lost"
        self.root.title(f"{self.root.title()} – SESSION PROCESS LOST")
        self.vars["state"].set("SESSION PROCESS LOST")
        self.state_label.configure(bg="#a02020")
        self.vars["hint"].set("The session process ended unexpectedly (killed or crashed). Every "
                              "confirmed answer is kept: run 'panostudy session resume --participant "
                              f"{self.participant or '…'}' (with its --db and --backend) at the terminal, then close "
                              "this window.")
        for button in self.buttons.values():
            button.configure(state="disabled")
        self.mirror_label.configure(image="")
        self.photo = None

    def show(self, s: dict) -> None:
        self.state = s.get("state", self.state)
        self.participant = s["participant"]
        self.vars["who"].set(f"Participant {s['participant']} · session {s['session_number']} of {s['session_count']} "
                             f"({s['session_name']}) · station {s.get('station') or 'unnamed'}")
        colours = {"running": "#2a7a2a", "paused": "#b07000", "break": "#2a5a9a", "asking": "#b07000",
                   "complete": "#555555", "consent": "#2a5a9a", "ready": "#2a5a9a", "validating": "#2a5a9a",
                   "validation_result": "#a02020"}
        names = {"validating": "VALIDATING THE EYE TRACKER", "validation_result": "RECALIBRATE"}
        self.vars["state"].set(names.get(self.state, self.state.upper()))
        self.vars["hint"].set(s.get("state_text", ""))
        self.state_label.configure(bg=colours.get(self.state, "#555555"))
        self.vars["step"].set(f"Step {s['step_index']} of {s['step_count']}: {s['step_text']}")
        if s.get("stimulus"):
            self.vars["stimulus"].set(f"Stimulus {s['stimulus']} · scene {s['scene']} · on screen {s['stimulus_time_s']:.1f} s "
                                      f"of {s['exposure_s']:g} s")
        else:
            self.vars["stimulus"].set("Stimulus: none on screen")
        self.vars["answer"].set(s.get("last_answer") or "Last answer: none yet")
        dropped = s.get("dropped")
        self.vars["rates"].set(
            f"Frames {s['frame_hz']:.1f} Hz ({s['frame_ms']:.1f} ms) · head poses {s['pose_text']}"
            + (f" · dropped frames {dropped}" if dropped is not None else "")
        )
        self.vars["gaze"].set(s.get("gaze_text", ""))
        self.vars["validation"].set(s.get("validation_text", ""))
        self.vars["note"].set(s.get("note", ""))
        self.buttons["resume"].configure(text="Close (R)" if self.state == "complete" else "Resume (R)")
        allowed = set(s.get("controls", ()))
        for name, button in self.buttons.items():
            button.configure(state="normal" if name in allowed else "disabled")
        log = s.get("log", [])
        if len(log) != self.logged:
            self.log.configure(state="normal")
            self.log.delete("1.0", "end")
            self.log.insert("end", "\n".join(log[-7:]))
            self.log.configure(state="disabled")
            self.logged = len(log)


def main(status, commands, memory_name: str, title: str) -> None:
    """The console process: runs the window until the session closes it."""
    memory = SharedMemory(name=memory_name)
    try:
        root = tk.Tk(className="panostudy-console")
    except tk.TclError as error:
        commands.put({"command": "console_failed", "reason": str(error)})
        memory.close()
        return
    root.title(title)
    Console(root, status, commands, memory)
    # at the screen's right edge: the participant's window (and a headset's mirror) open at its left
    root.update_idletasks()
    root.geometry(f"+{max(0, root.winfo_screenwidth() - root.winfo_reqwidth() - 16)}+16")
    try:
        root.mainloop()
    finally:
        memory.close()
