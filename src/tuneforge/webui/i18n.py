"""The UI's words in English and Chinese; Gradio picks the language from the browser (or its settings panel).

Config keys keep their names (they are what the YAML says); their help texts come from config.py in English.
"""

from __future__ import annotations

import gradio as gr

WORDS: dict[str, tuple[str, str]] = {
    "title": ("tuneforge: fine-tune Qwen3 models", "tuneforge：微调 Qwen3 模型"),
    "run": ("Run", "运行"),
    "refresh": ("Refresh", "刷新"),
    "tab_train": ("Train", "训练"),
    "tab_watch": ("Watch", "监控"),
    "tab_chat": ("Chat", "对话"),
    "tab_eval": ("Evaluate", "评估"),
    "tab_export": ("Export", "导出"),
    "browse": ("Browse a folder", "浏览文件夹"),
    "folder": ("Folder", "文件夹"),
    "entries": ("Entries", "内容"),
    "use_model": ("Use as model", "用作模型"),
    "use_dataset": ("Use as dataset 1", "用作数据集 1"),
    "yaml": ("Config YAML (kept in sync with the form)", "配置 YAML（与表单同步）"),
    "preview": ("Preview samples", "预览样本"),
    "estimate": ("Estimate memory and steps", "估算显存和步数"),
    "estimate_cpu": ("Estimate for this machine's CPU", "按本机 CPU 估算"),
    "launch": ("Launch training", "开始训练"),
    "stop": ("Stop (save a checkpoint)", "停止（保存检查点）"),
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
}

I18N = gr.I18n(en={k: v[0] for k, v in WORDS.items()}, zh={k: v[1] for k, v in WORDS.items()})


def t(key: str) -> gr.i18n.I18nData:
    """The translatable label for `key` (one of WORDS)."""
    return I18N(key)
