"""A tiny hand-written corpus about bicycle maintenance, with plausible distractors, and a project
folder (config + BEIR files + click logs) built from it for end-to-end tests."""

import json
from pathlib import Path

import pandas as pd
import yaml

PASSAGES = {
    "chain-lube": ("Lubricating a chain", "Apply one drop of chain oil to each roller, spin the cranks backwards, then wipe off the excess so the chain does not collect grit."),
    "chain-wear": ("Measuring chain wear", "A chain checker gauge shows elongation; replace the chain at 0.5 percent wear on 11 and 12 speed drivetrains to protect the cassette."),
    "chain-clean": ("Cleaning a chain", "Degrease the chain with a citrus solvent in a chain cleaning box, rinse with water, and dry it before adding new lubricant."),
    "tire-puncture": ("Fixing a puncture", "Remove the tube, find the hole by pumping it up and listening for air, roughen the area and apply a patch with vulcanising glue."),
    "tire-pressure": ("Choosing tire pressure", "Lower tire pressure gives grip and comfort on rough roads; higher pressure lowers rolling resistance on smooth tarmac. Check the sidewall range."),
    "tubeless-setup": ("Setting up tubeless tires", "Seat the bead with a burst of air from a compressor, add sealant through the valve, and shake the wheel so the sealant coats the casing."),
    "brake-pads": ("Replacing brake pads", "Remove the retaining pin, slide out the worn pads, push the pistons back with a plastic lever and fit the new pads with the spring."),
    "brake-bleed": ("Bleeding hydraulic brakes", "Attach a syringe of mineral oil or DOT fluid to the caliper bleed port and push fluid up to the lever reservoir until no air bubbles remain."),
    "brake-rub": ("Stopping disc brake rub", "Loosen the caliper bolts, squeeze the brake lever to centre the caliper over the rotor, and tighten the bolts while holding the lever."),
    "derailleur-index": ("Indexing a rear derailleur", "Turn the barrel adjuster a quarter turn at a time until the chain moves cleanly to the next cog without hesitation or noise."),
    "derailleur-limit": ("Setting derailleur limit screws", "The H and L limit screws stop the derailleur from pushing the chain into the spokes or off the smallest cog; set them before indexing."),
    "cable-replace": ("Replacing a shift cable", "Shift to the smallest cog, pull out the old inner cable from the shifter, feed a new cable through the housing and clamp it at the derailleur."),
    "wheel-true": ("Truing a wheel", "Spin the wheel in a truing stand and tighten or loosen spokes by a quarter turn near a wobble to pull the rim back to centre."),
    "hub-bearings": ("Servicing hub bearings", "Cup and cone hubs need periodic regreasing; adjust the cones so the axle turns smoothly with no play at the rim."),
    "headset-play": ("Fixing headset play", "Loosen the stem bolts, tighten the top cap until the knocking stops, then realign the stem with the wheel and tighten the stem bolts."),
    "saddle-height": ("Setting saddle height", "With the heel on the pedal at the bottom of the stroke, the leg should be straight; this gives a slight knee bend when pedalling normally."),
    "torque-carbon": ("Torque on carbon parts", "Carbon seatposts and handlebars crack if over-tightened: use a torque wrench, carbon assembly paste and the maker's torque value."),
    "bottom-bracket": ("Replacing a bottom bracket", "Remove the cranks, unscrew the cups with the right tool (the drive side is often reverse threaded), and grease the new threads."),
    "pedal-threads": ("Removing pedals", "The left pedal has a reverse thread: turn it clockwise to loosen it, while the right pedal loosens anticlockwise."),
    "cassette-remove": ("Removing a cassette", "Hold the cassette with a chain whip and unscrew the lockring with a cassette tool and a large wrench."),
}

CURATED = [
    ("how often should I oil my bike chain", "chain-lube"),
    ("when to replace a stretched chain", "chain-wear"),
    ("degrease a dirty chain", "chain-clean"),
    ("patch a flat inner tube", "tire-puncture"),
    ("what psi should my tyres be", "tire-pressure"),
    ("air bubbles in hydraulic brake lever feels spongy", "brake-bleed"),
    ("disc rotor rubbing on the pad", "brake-rub"),
    ("gears skip when shifting to bigger cog", "derailleur-index"),
    ("chain falls into the spokes", "derailleur-limit"),
    ("wobbly rim fix", "wheel-true"),
]
EVAL = [
    ("chain needs lube", "chain-lube", "drivetrain"),
    ("chain stretch gauge", "chain-wear", "drivetrain"),
    ("puncture repair kit how to", "tire-puncture", "wheels"),
    ("run lower pressure for comfort", "tire-pressure", "wheels"),
    ("seal tubeless tyre sealant", "tubeless-setup", "wheels"),
    ("new brake pads install", "brake-pads", "brakes"),
    ("spongy brakes bleed", "brake-bleed", "brakes"),
    ("shift cable stretched replace", "cable-replace", "drivetrain"),
    ("knocking in the headset when braking", "headset-play", "frame"),
    ("left pedal will not come off", "pedal-threads", "drivetrain"),
    ("how high should my seat be", "saddle-height", "frame"),
    ("carbon bar torque", "torque-carbon", "frame"),
]

# General-domain sentence pairs (STS Benchmark layout, 0-5) for the forgetting guard.
GENERAL = [
    (5.0, "the shop opens at nine", "the store opens at 9"), (0.0, "a cat sleeps in the sun", "the train was late"),
    (4.0, "she rides to work every day", "she cycles to her job daily"), (1.0, "he paints the fence", "he reads the paper"),
    (3.0, "children play in the park", "children walk through the park"), (2.0, "the soup is hot", "the soup is salty"),
    (4.5, "it rained all night", "rain fell through the night"), (0.5, "a dog chases a ball", "prices rose again"),
    (3.5, "the bridge is closed", "the bridge is shut for repairs"), (1.5, "a man sings", "a man dances"),
    (2.5, "the girl feeds the ducks", "the girl watches the ducks"), (5.0, "turn off the lights", "switch the lights off"),
]


def write_project(root: Path, model_path: str, **overrides) -> Path:
    """Write corpus, curated + eval sets (BEIR), click logs and a config into `root`; return the config path."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for pid, (title, text) in PASSAGES.items():
            f.write(json.dumps({"_id": pid, "title": title, "text": text}) + "\n")
    for name, rows in [("curated", [(q, p, None) for q, p in CURATED]), ("eval", EVAL)]:
        (root / name / "qrels").mkdir(parents=True, exist_ok=True)
        with open(root / name / "queries.jsonl", "w", encoding="utf-8") as f:
            for i, (query, _, segment) in enumerate(rows):
                row = {"_id": f"{name[0]}{i}", "text": query}
                if segment:
                    row["metadata"] = {"segment": segment}
                f.write(json.dumps(row) + "\n")
        lines = ["query-id\tcorpus-id\tscore"] + [f"{name[0]}{i}\t{pid}\t1" for i, (_, pid, _) in enumerate(rows)]
        (root / name / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    click_logs().to_parquet(root / "search_logs.parquet", index=False)
    (root / "general.tsv").write_text("".join(f"fixture\tgeneral\t2026\t{i:04d}\t{score:.1f}\t{a}\t{b}\n"
                                              for i, (score, a, b) in enumerate(GENERAL)), encoding="utf-8")
    config = {
        "corpus": "corpus.jsonl",
        "search_logs": "search_logs.parquet",
        "curated_pairs": {"queries": "curated/queries.jsonl", "qrels": "curated/qrels/test.tsv"},
        "eval": {"queries": "eval/queries.jsonl", "qrels": "eval/qrels/test.tsv"},
        "general_reference": "general.tsv",
        "base_model": model_path,
        "artifacts_dir": "artifacts",
        "training": {"epochs": 1, "batch_size": 4, "max_seq_length": 48, "logging_steps": 1},
        "mining": {"num_negatives": 2, "range_max": 10},
        # 12 eval queries: a permissive gate so the end-to-end run promotes; test_null_model and
        # test_gate use the real thresholds.
        # The tiny random-weight model drifts on the general set whatever it learns: the guard is
        # wired (report `general`, gate clause) but permissive here; test_general judges the clause.
        "gate": {"min_recall_at_10_lift": -1.0, "min_ci_lower_bound": -1.0, "allow_small_eval": True, "max_general_drop": 2.0},
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def click_logs() -> pd.DataFrame:
    """Two sessions per log query: the relevant passage at position 2 gets a long click,
    position 1 is skipped (a skip-above negative); one session pogo-sticks on position 1 first."""
    queries = [("clean chain with solvent", "chain-clean", "chain-lube"), ("true my wheel", "wheel-true", "hub-bearings"),
               ("remove cassette lockring", "cassette-remove", "bottom-bracket")]
    rows = []
    t0 = pd.Timestamp("2026-01-01T10:00:00Z")
    for qi, (query, good, above) in enumerate(queries):
        for s in range(2):
            session = f"s{qi}-{s}"
            t = t0 + pd.Timedelta(minutes=10 * qi + s)
            pogo = s == 1
            rows.append((query, above, 1, pogo, 3.0 if pogo else float("nan"), session, t))
            rows.append((query if s == 0 else query.upper() + "  ", good, 2, True, 95.0, session, t + pd.Timedelta(seconds=5)))
            rows.append((query, "saddle-height", 3, False, float("nan"), session, t))
    return pd.DataFrame(rows, columns=["query", "passage_id", "position", "clicked", "dwell_seconds", "session_id", "timestamp"])


def build_dataset(frame, folder, num_shards: int):
    """A corpus dataset (lib/corpus.py) of `frame`'s rows (passage_id, title, text), built through a
    BEIR JSONL file under `folder`, as the `corpus` asset builds one."""
    import json
    from pathlib import Path

    from embed_pipeline.lib.corpus import build_corpus_dataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "corpus.jsonl"
    source.write_text("".join(json.dumps({"_id": pid, "title": title, "text": text}) + "\n"
                              for pid, title, text in zip(frame["passage_id"], frame["title"], frame["text"], strict=True)))
    return build_corpus_dataset(source, folder / "dataset", num_shards)
