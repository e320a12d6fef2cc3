"""Plain labels (English, Chinese) and Chinese help texts for the config keys the Train tab shows.

The English help of a key is its description in config.py (the one source); this module only translates. Keys are
schema paths with dataset slots written `data.datasets[]` (the same words for every slot). A key added to config.py
without an entry here still shows, labelled from its name and with its English help.
"""

from __future__ import annotations

import re

# Schema path → (English label, Chinese label, Chinese help).
KEYS: dict[str, tuple[str, str, str]] = {
    "model.name_or_path": ("Model", "模型", "Hub 模型 ID（如 Qwen/Qwen3-8B）或含 config.json 的本地文件夹。"),
    "model.hub": ("Model hub", "模型仓库", "从哪个平台下载 Hub 模型。"),
    "model.revision": ("Revision", "版本", "Hub 仓库的分支、标签或提交。"),
    "model.cache_dir": ("Download cache", "下载缓存", "下载缓存文件夹（默认使用 Hub 自己的）。"),
    "model.init": (
        "Initial weights",
        "初始权重",
        "pretrained：预训练权重；random：按 config.json 随机初始化（演示、测试）。",
    ),
    "model.tokenizer": ("Tokenizer", "分词器", "分词器文件夹或 ID（不在模型旁边时填写）。"),
    "model.dtype": ("Weights dtype", "权重精度", "auto：支持的 GPU 用 bf16，其他 GPU 用 fp16，CPU 用 fp32。"),
    "model.attn": ("Attention kernel", "注意力实现", "auto：可用时选 flash-attn 2，否则 sdpa。"),
    "model.trust_remote_code": ("Trust remote code", "信任远程代码", "允许运行 Hub 上的自定义模型代码。"),
    "model.kernels": ("Fused kernels", "融合算子", "liger：Liger-Kernel 的 RMSNorm、RoPE、SwiGLU（CUDA GPU）。"),
    "data.datasets[].path": ("Dataset", "数据集", "文件、文件夹，或 Hugging Face / ModelScope 数据集 ID。"),
    "data.datasets[].source": ("Source", "来源", "auto：本地路径存在时读本地，否则当作 Hugging Face 数据集 ID。"),
    "data.datasets[].format": ("Format", "数据格式", "记录的结构；auto：根据第一条记录的列自动识别。"),
    "data.datasets[].columns": ("Column names", "列名映射", "重命名格式中的列：{格式中的角色: 文件中的列名}。"),
    "data.datasets[].placeholders": ("Placeholders", "占位符", "替换每段文本中的 {{name}} 等占位符。"),
    "data.datasets[].system": ("System prompt", "系统提示词", "没有系统提示词的记录使用这一条。"),
    "data.datasets[].weight": ("Mix weight", "混合权重", "该数据集在混合中的相对占比。"),
    "data.datasets[].max_samples": ("Max samples", "最多样本数", "最多保留这么多条记录（打乱之后）。"),
    "data.datasets[].split": ("Split", "数据划分", "Hub 数据集的 split。"),
    "data.datasets[].subset": ("Subset", "子集", "Hub 数据集的子集（配置名）。"),
    "data.thinking": ("Thinking", "思考内容", "auto：样本有推理时训练推理，没有时在提示侧放空的 think 块。"),
    "data.train_on": ("Trained turns", "训练的轮次", "训练哪些助手回复：全部，或只有最后一轮。"),
    "data.max_length": ("Max length (tokens)", "最大长度（token）", "样本的最大 token 数。"),
    "data.truncation": ("Longer samples", "超长样本", "更长的样本：丢弃（drop）或截断（truncate）。"),
    "data.val_size": ("Validation share", "验证集比例", "验证集占比（< 1）或条数（>= 1）。"),
    "data.seed": ("Data seed", "数据随机种子", "打乱、混合和划分所用的随机种子。"),
    "data.packing": ("Packing", "样本打包", "把一个批次的样本无填充地打包成行；每个样本只关注自己。"),
    "data.group_by_length": ("Group by length", "按长度分组", "把长度相近的样本放进同一批（更少填充）。"),
    "data.num_proc": ("Tokenizer processes", "分词进程数", "分词使用的进程数（默认按数据量决定）。"),
    "data.cache_dir": ("Tokenized-data cache", "分词缓存", "分词结果的缓存目录（默认 ~/.cache/tuneforge/data）。"),
    "method.type": ("Method", "微调方法", "lora；qlora：量化底座上的 LoRA；full：训练全部权重。"),
    "method.bits": ("Quantized bits", "量化位数", "qlora：底座每个权重的量化位数。"),
    "method.quant_type": ("4-bit type", "4 位量化类型", "qlora 4 位：NormalFloat4（QLoRA 的）或 fp4。"),
    "method.double_quant": ("Double quantization", "双重量化", "qlora 4 位：连分块缩放也量化（每权重少 0.37 位）。"),
    "method.quant_storage": ("Quantized storage", "量化存储类型", "qlora 4 位：打包权重的存储类型；auto：模型精度。"),
    "method.rank": ("LoRA rank", "LoRA 秩", "LoRA 秩 r：低秩更新的内部维度。"),
    "method.alpha": ("LoRA alpha", "LoRA alpha", "LoRA alpha：更新按 alpha / rank 缩放。"),
    "method.dropout": ("LoRA dropout", "LoRA dropout", "LoRA 输入上的 dropout。"),
    "method.target_modules": ("Target modules", "目标模块", "all-linear，或模块名列表。"),
    "method.use_rslora": ("rsLoRA", "rsLoRA", "秩稳定 LoRA：按 alpha / sqrt(rank) 缩放。"),
    "method.use_dora": ("DoRA", "DoRA", "DoRA：在 LoRA 方向之外再训练一个幅度向量。"),
    "method.modules_to_save": ("Modules trained in full", "全量训练的模块", "在 LoRA 之外完整训练的模块。"),
    "method.adapter": (
        "Continue from adapter",
        "继续训练的适配器",
        "LoRA 适配器文件夹或已完成的 LoRA 运行，在其上继续训练。",
    ),
    "method.objective": (
        "Objective",
        "训练目标",
        "sft：对话的下一词损失；dpo、orpo、simpo：偏好对；kto：标注好坏的回答。",
    ),
    "method.beta": ("Beta", "Beta", "dpo、kto：向参考模型拉近的强度（推荐 0.1）；orpo：偏好损失的权重。"),
    "method.dpo_loss": ("DPO loss", "DPO 损失", "dpo：TRL 的 loss_type；sigmoid 是 DPO 论文的损失。"),
    "method.reference": (
        "Reference model",
        "参考模型",
        "dpo、kto：model：每步计算参考对数概率；precomputed：训练前算好。",
    ),
    "method.simpo_gamma": ("SimPO gamma", "SimPO gamma", "simpo：chosen 与 rejected 之间的目标奖励间隔。"),
    "method.grpo.loss": (
        "GRPO loss",
        "GRPO 损失",
        "TRL 的 loss_type：grpo（每条回答的平均 token 损失）、dapo（整批 token 平均，TRL 默认）、"
        "dr_grpo（按 token 求和再除以 max_completion_length，配合 scale_rewards: none）。",
    ),
    "method.grpo.num_generations": (
        "Completions per prompt",
        "每个提示的采样数",
        "每个提示采样的回答数；全局批大小须是它的整数倍。",
    ),
    "method.grpo.max_completion_length": (
        "Max completion length",
        "最大回答长度",
        "回答的最大 token 数（更长的被截断）。",
    ),
    "method.grpo.beta": ("KL beta", "KL 系数", "向参考模型拉近的强度；0：不用参考模型（省显存、更快）。"),
    "method.grpo.temperature": ("Sampling temperature", "采样温度", "采样回答时的温度。"),
    "method.grpo.scale_rewards": (
        "Scale rewards",
        "奖励归一化",
        "优势值除以组内、批内的标准差，或不除（Dr. GRPO：none）。",
    ),
    "method.grpo.mask_truncated": (
        "Mask truncated",
        "屏蔽截断回答",
        "被 max_completion_length 截断的回答不计入损失（DAPO 的超长过滤）。",
    ),
    "method.grpo.generation": (
        "Generation backend",
        "采样后端",
        "谁来采样：transformers 的 generate（CPU 与 GPU）；vllm：与训练同卡；"
        "vllm_server：vllm_server_url 处的 `trl vllm-serve` 服务。",
    ),
    "method.grpo.vllm_server_url": ("vLLM server URL", "vLLM 服务地址", "vllm_server：服务的基础 URL。"),
    "method.grpo.instruction": (
        "Prompt instruction",
        "提示附加说明",
        "另起一行追加到每个提示的最后一个用户轮次，例如 `tuneforge eval --suite math` 使用的数学说明。",
    ),
    "method.grpo.completions_every": (
        "Log completions every",
        "记录回答间隔",
        "每 N 步把该步的提示、回答和奖励追加到 RUN/completions.jsonl（0：不记录）。",
    ),
    "method.desirable_weight": ("Desirable weight", "正例权重", "kto：正例损失的权重（正例较少时调高）。"),
    "method.undesirable_weight": ("Undesirable weight", "负例权重", "kto：负例损失的权重（负例较少时调高）。"),
    "train.epochs": ("Epochs", "训练轮数", "遍历训练集的次数（可以是小数）。"),
    "train.max_steps": ("Max steps", "最大步数", "训练这么多个优化步后停止。"),
    "train.learning_rate": ("Learning rate", "学习率", "预热后达到的峰值学习率。"),
    "train.lr_scheduler": ("LR schedule", "学习率调度", "任意 transformers 调度器名称。"),
    "train.warmup_ratio": ("Warm-up share", "预热比例", "预热占全部步数的比例（warmup_steps 为 0 时使用）。"),
    "train.warmup_steps": ("Warm-up steps", "预热步数", "学习率从 0 线性升到 learning_rate 的步数；大于 0 时优先。"),
    "train.weight_decay": ("Weight decay", "权重衰减", "优化器的解耦权重衰减。"),
    "train.max_grad_norm": ("Max gradient norm", "最大梯度范数", "把梯度范数裁剪到这个值（0：不裁剪）。"),
    "train.per_device_batch_size": ("Batch size per GPU", "每卡批大小", "每个设备一次前向的样本数（训练和评估）。"),
    "train.gradient_accumulation": ("Gradient accumulation", "梯度累积", "每个优化步的前向次数。"),
    "train.gradient_checkpointing": ("Gradient checkpointing", "梯度检查点", "反向时重算激活：省显存，步子更慢。"),
    "train.loss": ("Loss kernel", "损失实现", "chunked：不生成完整 logits 的交叉熵；standard：普通实现。"),
    "train.compile": ("Compile layers", "编译各层", "对每个解码层做 torch.compile（前几步更慢）。"),
    "train.optim": ("Optimizer", "优化器", "8bit：8 位优化器状态（bitsandbytes）；paged：显存紧张时换页到内存。"),
    "train.logging_steps": ("Log every N steps", "每 N 步记录", "每 N 步把损失和学习率写入 metrics.jsonl。"),
    "train.eval_steps": ("Evaluate every N steps", "每 N 步评估", "每 N 步评估一次（默认每次保存时）。"),
    "train.save_steps": ("Checkpoint every N steps", "每 N 步保存", "每 N 个优化步保存一个检查点。"),
    "train.save_total_limit": ("Checkpoints kept", "保留检查点数", "保留的检查点个数。"),
    "train.seed": ("Training seed", "训练随机种子", "模型初始化、LoRA 权重和 dropout 的随机种子。"),
    "train.resume": ("Resume from", "从检查点继续", "auto（本运行最新的检查点）或检查点路径。"),
    "train.preflight": ("Pre-flight check", "训练前检查", "数据准备好后打印显存估算和步数，放不下时停止。"),
    "train.report_to": ("Experiment tracker", "实验跟踪", "实验跟踪工具（安装同名 extra）；metrics.jsonl 总会写入。"),
    "train.run_name": ("Run name (tracker)", "运行名称（跟踪）", "实验跟踪里的运行名称（默认：运行目录的名字）。"),
    "train.project": (
        "Project (tracker)",
        "项目（跟踪）",
        "跟踪工具的项目（W&B、SwanLab）或实验（MLflow）；默认：跟踪工具自己的。",
    ),
    "output.dir": ("Run folder", "运行目录", "运行目录：配置、适配器或模型、检查点、指标。"),
    "output.overwrite": ("Overwrite a finished run", "覆盖已完成的运行", "允许在已有完成运行的目录里重新训练。"),
    "distributed.nproc": (
        "GPUs (processes) per node",
        "每节点 GPU（进程）数",
        "每个节点的进程数，每 GPU 一个；大于 1 时用 torchrun。",
    ),
    "distributed.nnodes": ("Machines", "机器数", "参与的机器数；每台机器运行同一条命令。"),
    "distributed.node_rank": ("This machine's index", "本机序号", "本机的序号；0 号节点负责汇合并写运行目录。"),
    "distributed.master_addr": ("Node 0 address", "0 号节点地址", "0 号节点的地址，每个节点都要能访问。"),
    "distributed.master_port": (
        "Rendezvous port",
        "汇合端口",
        "0 号节点上的汇合端口（默认：单节点用空闲端口，多节点 29500）。",
    ),
    "distributed.strategy": (
        "Strategy",
        "并行策略",
        "ddp：每卡一份完整副本；deepspeed：ZeRO 分片；fsdp：PyTorch 全分片。",
    ),
    "distributed.deepspeed": (
        "DeepSpeed preset",
        "DeepSpeed 预设",
        "DeepSpeed 预设（zero2、zero2_offload、zero3、zero3_offload）或 JSON 文件。",
    ),
    "distributed.fsdp_offload": ("FSDP CPU offload", "FSDP 卸载到 CPU", "FSDP：参数、梯度和优化器状态放在 CPU 内存。"),
    "distributed.timeout_minutes": ("Collective timeout (min)", "通信超时（分钟）", "一次集合通信最多等待多久。"),
}


def key_of(path: str) -> str:
    """The KEYS entry of a schema path: `data.datasets[1].path` → `data.datasets[].path`."""
    return re.sub(r"\[\d+\]", "[]", path)


def label(path: str) -> tuple[str, str]:
    """(English, Chinese) label of a schema path; dataset slots after the first are numbered."""
    en, zh, _ = KEYS.get(key_of(path), (path.rsplit(".", 1)[-1].replace("_", " ").capitalize(),) * 2 + ("",))
    slot = re.search(r"datasets\[(\d+)\]", path)
    if slot and int(slot.group(1)) > 0:
        n = int(slot.group(1)) + 1
        return f"Dataset {n}: {en.lower()}", f"数据集 {n}：{zh}"
    return en, zh


def help_zh(path: str, description: str) -> str:
    """The Chinese help of a schema path (its English description where none is written yet)."""
    entry = KEYS.get(key_of(path))
    return entry[2] if entry else description


# The Data tab's form: synth config key → (English label, Chinese label); the key is shown beside each.
SYNTH_KEYS: dict[str, tuple[str, str]] = {
    "docs": ("Documents folder", "文档文件夹"),
    "model.endpoint": ("Endpoint URL", "服务地址"),
    "model.name": ("Model name", "模型名称"),
    "model.api_key_env": ("API key variable (its name, never the key)", "API 密钥环境变量（填变量名，不填密钥）"),
    "model.api_key_file": ("API key file", "API 密钥文件"),
    "generate.questions_per_chunk": ("Questions per chunk (0: by length)", "每块问题数（0：按长度）"),
}
