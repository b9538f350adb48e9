"""The stages: one LightningModule per R1 training stage; they orchestrate, the maths lives in r1lab.maths."""
