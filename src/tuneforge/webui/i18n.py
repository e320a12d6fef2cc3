"""The UI's words in English and Chinese; Gradio picks the language from the browser (or its settings panel).

Each config key has a plain label in both languages with its YAML key beside its help (labels.py); the English
help is the key's description in config.py.
"""

from __future__ import annotations

import gradio as gr

from tuneforge.webui import labels, schema

WORDS: dict[str, tuple[str, str]] = {
    "title": ("tuneforge: fine-tune Qwen3 models", "tuneforge：微调 Qwen3 模型"),
    "run": ("Run", "运行"),
    "refresh": ("Refresh", "刷新"),
    "tab_train": ("Train", "训练"),
    "tab_watch": ("Watch", "监控"),
    "tab_chat": ("Chat", "对话"),
    "tab_eval": ("Evaluate", "评估"),
    "tab_export": ("Export", "导出"),
    "yaml": ("Config YAML (kept in sync with the form)", "配置 YAML（与表单同步）"),
    "preview": ("Preview samples", "预览样本"),
    "estimate": ("Estimate memory and steps", "估算显存和步数"),
    "estimate_cpu": ("Estimate for this machine's CPU", "按本机 CPU 估算"),
    "launch": ("Launch training", "开始训练"),
    "stop": ("Stop", "停止"),
    "resume": ("Resume", "继续训练"),
    "message": ("Status", "状态"),
    "progress": ("Progress", "进度"),
    "log": ("Log", "日志"),
    "loss": ("Loss", "损失"),
    "lr": ("Learning rate", "学习率"),
    "grad_norm": ("Gradient norm", "梯度范数"),
    "tokens_s": ("Tokens per second", "每秒 token 数"),
    "memory": ("Memory (GiB)", "内存（GiB）"),
    "system": ("System prompt", "系统提示词"),
    "think": ("Thinking mode", "思考模式"),
    "show_thinking": ("Show thinking", "显示思考过程"),
    "device_map": ("Device map", "设备映射"),
    "device_map_info": (
        "A base too large for one GPU, spread over all of them (GPU only)",
        "单卡放不下的基础模型分布到所有 GPU 上（仅限 GPU）",
    ),
    "max_new_tokens": ("Max new tokens", "最大生成 token 数"),
    "temperature": ("Temperature (0: greedy)", "温度（0：贪心）"),
    "top_p": ("Top-p", "Top-p"),
    "base": ("Base model", "基础模型"),
    "tuned": ("Fine-tuned", "微调后"),
    "prompt": ("Message", "消息"),
    "send": ("Send", "发送"),
    "clear": ("Clear", "清空"),
    "suite": ("Suite", "评测集"),
    "tasks": ("Tasks (comma-separated, optional)", "任务（逗号分隔，可选）"),
    "limit": ("Items per task", "每个任务的条数"),
    "start_eval": ("Start evaluation", "开始评估"),
    "report": ("Report", "报告"),
    "chart": ("Chart", "图表"),
    "targets": ("Targets", "导出目标"),
    "gguf_type": ("GGUF type", "GGUF 类型"),
    "force": ("Replace existing outputs", "覆盖已有输出"),
    "start_export": ("Start export", "开始导出"),
    "outputs": ("Outputs", "输出文件"),
    "start_from": ("Start from", "从这里开始"),
    "start_from_info": (
        "an example, or an earlier run (train again like this)",
        "示例配置，或以前的运行（照此再训练一次）",
    ),
    "output_name": ("Output name", "输出名称"),
    "output_name_info": ("the run folder's name under the runs folder", "运行目录在 runs 文件夹下的名称"),
    "gpu_size": ("GPU memory (GB)", "GPU 显存（GB）"),
    "verdict": ("Fits?", "放得下吗？"),
    "gpus": ("Which GPUs", "使用哪些 GPU"),
    "gpus_info": (
        "CUDA_VISIBLE_DEVICES of the job, e.g. 0,1; empty: all",
        "任务的 CUDA_VISIBLE_DEVICES，如 0,1；留空：全部",
    ),
    "command": ("Command", "命令"),
    "dataset_info": ("Dataset", "数据集"),
    "group_method": ("LoRA, QLoRA and objective", "LoRA、QLoRA 与训练目标"),
    "group_data": ("Data mixing", "数据混合"),
    "group_distributed": ("Distributed (several GPUs)", "分布式（多 GPU）"),
    "group_logging": ("Logging and checkpoints", "日志与检查点"),
    "group_advanced": ("Advanced", "高级"),
    "tab_compare": ("Compare", "对比"),
    "runs": ("Runs", "运行"),
    "log_scale": ("Log scale", "对数坐标"),
    "final_metrics": ("Final metrics", "最终指标"),
    "config_diff": ("Config keys that differ", "不同的配置项"),
    "eval_reports": ("Eval reports", "评估报告"),
    "rewards": ("Rewards (GRPO)", "奖励（GRPO）"),
    "kl": ("KL divergence", "KL 散度"),
    "completion_length": ("Completion length (tokens)", "回答长度（token）"),
    "tab_data": ("Data", "数据"),
    "synth_job": ("Synth job", "数据生成任务"),
    "synth_start": ("Start synth", "开始生成"),
    "synth_pairs": ("Pairs (train split)", "问答对（训练集）"),
    "synth_pair": ("Pair", "问答对"),
    "synth_question": ("Question", "问题"),
    "synth_reasoning": ("Reasoning (kept as generated)", "推理过程（保持原样）"),
    "synth_answer": ("Answer", "回答"),
    "synth_accept": ("Accept (with edits)", "接受（含修改）"),
    "synth_reject": ("Reject", "拒绝"),
    "synth_accept_rest": ("Accept all pending", "接受其余全部"),
    "synth_export": ("Export accepted", "导出已接受"),
}
for _key, (_en, _zh) in labels.SYNTH_KEYS.items():
    WORDS[f"synth:{_key}"] = (_en, _zh)
for _field in schema.FIELDS:
    _en, _zh = labels.label(_field.path)
    WORDS[f"label:{_field.path}"] = (_en, _zh)
    WORDS[f"help:{_field.path}"] = (
        f"{_field.path} · {_field.description}",
        f"{_field.path} · {labels.help_zh(_field.path, _field.description)}",
    )

I18N = gr.I18n(en={k: v[0] for k, v in WORDS.items()}, zh={k: v[1] for k, v in WORDS.items()})


def t(key: str) -> gr.i18n.I18nData:
    """The translatable label for `key` (one of WORDS)."""
    return I18N(key)
