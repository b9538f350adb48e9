"""LightningDataModules of the R1 pipeline, built by Hydra from configs/data/*.yaml (`_target_: data_modules.X`).

- TextDataModule: raw text packed into blocks (pretraining the demo's base model)
- ColdStartDataModule: cold-start chains of thought in the `<reasoning_process>`/`<summary>` layout (chat SFT)
- GeneralDataModule: non-reasoning chat data (chat SFT)
- ChatDataModule: any prompt/response rows, with an optional response check
- PromptDataModule: prompts with gold answers (GRPO, evaluation)
- MixedPromptDataModule: reasoning and general prompts mixed in every batch (R1 stage 4 RL)
- PreferenceDataModule, PointwisePreferenceDataModule: preference pairs or labelled responses (reward models)
- RejectionSampledDataModule: rejection-sampled reasoning rows mixed with general rows per batch (R1 stage 3 SFT)
Shared tokenisation, padding and bucketing live in data_modules/common.py.
"""

from data_modules.chat import ChatDataModule, GeneralDataModule
from data_modules.cold_start import ColdStartDataModule, is_cold_start_format
from data_modules.preferences import PointwisePreferenceDataModule, PreferenceDataModule
from data_modules.prompts import MixedPromptDataModule, PromptDataModule
from data_modules.rejection import RejectionSampledDataModule
from data_modules.text import TextDataModule

__all__ = ["ChatDataModule", "ColdStartDataModule", "GeneralDataModule", "MixedPromptDataModule",
           "PointwisePreferenceDataModule", "PreferenceDataModule", "PromptDataModule", "RejectionSampledDataModule",
           "TextDataModule", "is_cold_start_format"]
